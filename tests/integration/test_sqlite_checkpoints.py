"""A serving process's SQLite file is checkpointed by a thread of its own (db.engine's
``_Checkpointer``): the requests that commit do not wait for it, and the database file
holds what was committed within a fraction of a second, however few the commits."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa

from midonet_membership.db.engine import create_engine, writer


def _rows_in_the_file_alone(path: Path) -> int | None:
    """Rows of table t in a copy of the database file without its WAL: what has been
    checkpointed. None if the copy caught a checkpoint mid-write."""
    copy = path.parent / "copy" / path.name
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
        shutil.rmtree(copy.parent)


def _commit_rows(engine: sa.Engine, count: int) -> None:
    with writer(engine) as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    conn = sqlite3.connect(engine.url.database)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the table is in the file, empty
    conn.close()
    for i in range(count):
        with writer(engine) as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": i})


def _checkpointed_within(path: Path, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    rows = None
    while time.monotonic() < deadline:
        rows = _rows_in_the_file_alone(path)
        if rows:
            return rows
        time.sleep(0.05)
    return rows


def test_a_serving_engine_s_commits_reach_the_file_without_a_request_checkpointing(
        tmp_path):
    serving_path, other_path = tmp_path / "serving.sqlite", tmp_path / "other.sqlite"
    serving = create_engine(f"sqlite:///{serving_path}", serving=True)
    other = create_engine(f"sqlite:///{other_path}")
    try:
        _commit_rows(serving, 10)
        _commit_rows(other, 10)
        assert _checkpointed_within(serving_path, 2.0) == 10
        # Without the thread, ten small commits stay in the WAL: SQLite's own checkpoint
        # waits for 1,000 pages, and it runs in the commit that crosses them.
        assert _checkpointed_within(other_path, 0.5) == 0
        with serving.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 10_000
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 10
    finally:
        serving.dispose()
        other.dispose()


def test_the_checkpoint_thread_never_creates_a_database_file(tmp_path):
    # A file removed under a running server (its state directory cleaned up) must not come
    # back empty from the checkpoint thread: only the engine creates its database.
    path = tmp_path / "absent.sqlite"
    engine = create_engine(f"sqlite:///{path}", serving=True)
    try:
        time.sleep(0.5)  # five of the thread's turns
        assert not path.exists()
    finally:
        engine.dispose()
