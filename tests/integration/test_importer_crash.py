"""Invariant 6 for the importer: SIGKILL it at random moments; nothing lost, nothing twice."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from midonet_membership import nsdb
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import migration
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.db.models import memberships, task_state, tasks

BIN = Path(sys.executable).parent
EFFECT_LOG = """
CREATE TABLE effects (kind TEXT, host_id TEXT);
CREATE TRIGGER member_added AFTER INSERT ON tunnel_zone_members
    BEGIN INSERT INTO effects VALUES ('add', NEW.host_id); END;
CREATE TRIGGER member_removed AFTER DELETE ON tunnel_zone_members
    BEGIN INSERT INTO effects VALUES ('remove', OLD.host_id); END;
"""


def _write_changes(engine, count: int, done: threading.Event) -> None:
    """``count`` committed changes: creates and deletes over a pool of hosts."""
    api = AgentMemberships(engine)
    rng = random.Random(7)
    members: dict[str, str] = {}
    free_ips = [f"198.51.100.{i}" for i in range(1, 201)]
    for _ in range(count):
        if members and (not free_ips or rng.random() < 0.45):
            host = rng.choice(sorted(members))
            api.delete(RequestContext.admin(), host)
            free_ips.append(members.pop(host))
        else:
            host, ip = str(uuid.uuid4()), free_ips.pop(rng.randrange(len(free_ips)))
            api.create(RequestContext.admin(), [{"id": host, "ip_address": ip}])
            members[host] = ip
    done.set()


def test_sigkilled_importer_loses_nothing_and_applies_nothing_twice(make_database, tmp_path):
    database_url = make_database("postgresql")
    migration.upgrade(database_url)
    engine = db_engine.create_engine(database_url)
    nsdb_path = tmp_path / "nsdb.sqlite"
    nsdb.connect(f"sqlite:///{nsdb_path}").close()  # creates the schema
    with sqlite3.connect(nsdb_path) as conn:
        conn.executescript(EFFECT_LOG)
    conf = tmp_path / "neutron.conf"
    conf.write_text(f"[database]\nconnection = {database_url}\n"
                    f"[nsdb]\nconnection = sqlite:///{nsdb_path}\n"
                    "[cluster]\nbatch_size = 50\n")
    command = [str(BIN / "midonet-membership"), "importer", "--config-file", str(conf),
               "--state-dir", str(tmp_path)]
    log = open(tmp_path / "importer.log", "ab")

    done = threading.Event()
    writer = threading.Thread(target=_write_changes, args=(engine, 2000, done))
    writer.start()
    rng = random.Random(11)
    kills = 0
    try:
        while kills < 20:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            time.sleep(rng.uniform(0.3, 0.9))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        writer.join()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with engine.connect() as conn:
            last_task = conn.execute(sa.select(sa.func.max(tasks.c.id))).scalar()
        store = nsdb.connect(f"sqlite:///{nsdb_path}")
        deadline = time.monotonic() + 60
        while store.get_position() != last_task and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get_position() == last_task
        with engine.connect() as conn:
            table = dict(conn.execute(sa.select(memberships.c.id, memberships.c.ip_address)).all())
            creates = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(
                tasks.c.type == "CREATE", tasks.c.data_type == "AGENTMEMBERSHIP")).scalar()
            deletes = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(
                tasks.c.type == "DELETE")).scalar()
        assert creates + deletes == 2000
        assert store.list_members() == table
        with sqlite3.connect(nsdb_path) as conn:
            effects = dict(conn.execute("SELECT kind, count(*) FROM effects GROUP BY kind"))
        assert effects == {"add": creates, "remove": deletes}, "a task was applied twice"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(sa.select(task_state.c.last_processed_id)).scalar() == last_task:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("midonet_task_state never caught up with the NSDB")
        store.close()
    finally:
        proc.kill()
        proc.wait()
        done.wait(60)
        log.close()
        engine.dispose()
