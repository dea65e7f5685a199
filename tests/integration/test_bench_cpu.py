"""bench/api.py's PostgreSQL CPU figure counts the backends of connections closed meanwhile.

The database floor opens its connections for each run and closes them at its end; their
backends' CPU must stay in the figure (it went missing, and the floor's PostgreSQL CPU a
request came out negative in `var/bench-api.json`).
"""

from __future__ import annotations

import os
import time

import psycopg
import pytest
import sqlalchemy as sa

from tests.fixtures.databases import ADMIN_URLS, require_server

pytestmark = pytest.mark.postgresql


def _cpu_of(pid: int, tck: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / tck


def test_a_closed_connections_backend_cpu_stays_counted(bench_api) -> None:
    tck = os.sysconf("SC_CLK_TCK")
    conninfo = sa.make_url(ADMIN_URLS["postgresql"]).set(
        drivername="postgresql").render_as_string(hide_password=False)
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        require_server(f"PostgreSQL is not reachable: {exc}")
    before = bench_api._postgres_cpu_seconds()
    with conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        if _cpu_of(backend, tck) is None:
            require_server("PostgreSQL runs on another machine: its processes are not here")
        deadline = time.monotonic() + 30
        while (used := _cpu_of(backend, tck)) < 0.2 and time.monotonic() < deadline:
            conn.execute("SELECT count(*) FROM generate_series(1, 1000000)").fetchone()
    assert used >= 0.2, f"the backend used only {used} s of CPU in 30 s: too little to tell"
    deadline = time.monotonic() + 10
    while _cpu_of(backend, tck) is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # until the postmaster has reaped the backend
    assert _cpu_of(backend, tck) is None, "the backend did not exit after its connection"
    # Everything else PostgreSQL did meanwhile only adds.
    assert bench_api._postgres_cpu_seconds() - before >= used - 2 / tck
