"""Bad configuration stops start-up with one line saying what is wrong (issue 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _start(tmp_path: Path, *args: str, database: str | None = None,
           command: str = "midonet-membership") -> subprocess.CompletedProcess:
    extra: list[str] = []
    if database is not None:
        conf = tmp_path / "neutron.conf"
        conf.write_text(f"[database]\nconnection = {database}\n")
        extra = ["--config-file", str(conf)]
    return subprocess.run([str(BIN / command), *args, *extra, "--state-dir",
                           str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60)


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines()  # argparse's usage comes first
             if line and not line.startswith(("usage:", " ")) and " INFO " not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.1:", "localhost:http", ":70000"])
def test_bind_without_a_port(tmp_path, bind):
    line = _one_line(_start(tmp_path, "all-in-one", "--bind", bind))
    assert f"'{bind}' is not HOST:PORT" in line


def test_a_driver_that_is_not_installed(tmp_path):
    line = _one_line(_start(tmp_path, "all-in-one",
                            database="postgresql+psycopg2://postgres@127.0.0.1/x"))
    assert "postgresql+psycopg2://: its driver is not installed (psycopg2)" in line
    assert "use postgresql+psycopg://" in line
    line = _one_line(_start(tmp_path, "task-list", command="midonet-db-manage",
                            database="postgresql+psycopg2://postgres@127.0.0.1/x"))
    assert "its driver is not installed" in line


def test_an_unknown_database_type(tmp_path):
    line = _one_line(_start(tmp_path, "importer", database="postgres://127.0.0.1/x"))
    assert "postgres://: no such database type" in line


def test_an_unreachable_database(tmp_path):
    line = _one_line(_start(tmp_path, "all-in-one",
                            database="postgresql+psycopg://postgres:pw@127.0.0.1:1/x"))
    assert line.startswith("midonet-membership: cannot use the database "
                           "postgresql+psycopg://postgres:***@127.0.0.1:1/x")
    assert "Connection refused" in line and "pw" not in line
