"""Processes started together on a new database all upgrade its schema, one after the other.

`api`, `importer` and `all-in-one` each upgrade the schema when they start; an operator who
starts `api` and `importer` at once on a new database must get two running services, not one
that died on a duplicate version table.
"""

from __future__ import annotations

import subprocess
import sys
import time

import sqlalchemy as sa

from midonet_membership.db import migration

UPGRADE_AT = """
import sys, time
from midonet_membership.db import migration
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
migration.upgrade(url)
"""


def test_four_processes_upgrade_a_new_database_at_the_same_instant(database_url):
    start = time.time() + 3.0  # every process has imported alembic by then
    processes = [subprocess.Popen([sys.executable, "-c", UPGRADE_AT, database_url, str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(4)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-2000:]
    engine = sa.create_engine(database_url)
    try:
        assert migration.current_revision(engine) == migration.head_revision(database_url)
        with engine.connect() as conn:
            versions = conn.execute(
                sa.text(f"SELECT count(*) FROM {migration.VERSION_TABLE}")).scalar()
        assert versions == 1
        tables = set(sa.inspect(engine).get_table_names())
        assert {"midonet_agent_memberships", "midonet_tasks"} <= tables
    finally:
        engine.dispose()
