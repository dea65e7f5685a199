"""Processes started together on a new database all upgrade its schema, one after the other.

`api`, `importer` and `all-in-one` each upgrade the schema when they start; an operator who
starts `api` and `importer` at once on a new database must get two running services, not one
that died on a duplicate version table. And `midonet-db-manage upgrade` takes a database made
before the expand and contract branches (at 0007) to both branches' heads, its rows kept.
"""

from __future__ import annotations

import datetime
import os
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

BRANCH_HEADS = ["0008_contract_initial", "0008_expand_initial"]


def _versions(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(
            sa.text(f"SELECT version_num FROM {migration.VERSION_TABLE}")).scalars())


def _manage_upgrade(url: str, tmp_path) -> str:
    config = tmp_path / "manage.conf"
    config.write_text(f"[database]\nconnection = {url}\n")
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "midonet-db-manage"),
                           "--config-file", str(config), "upgrade"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done
    return done.stdout


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
        assert _versions(engine) == BRANCH_HEADS  # one row per branch, none twice
        tables = set(sa.inspect(engine).get_table_names())
        assert {"midonet_agent_memberships", "midonet_tasks"} <= tables
    finally:
        engine.dispose()


def test_db_manage_upgrade_takes_a_new_database_to_both_branch_heads(database_url, tmp_path):
    out = _manage_upgrade(database_url, tmp_path)
    assert "upgraded from None to 0008_contract_initial, 0008_expand_initial" in out
    engine = sa.create_engine(database_url)
    try:
        assert _versions(engine) == BRANCH_HEADS
        assert migration.current_revision(engine) == migration.head_revision(database_url)
    finally:
        engine.dispose()
    assert "already at 0008_contract_initial, 0008_expand_initial" in _manage_upgrade(
        database_url, tmp_path)


def test_db_manage_upgrade_takes_a_database_at_0007_to_both_branch_heads(database_url,
                                                                         tmp_path):
    """A deployment made before the expand and contract branches is at 0007, one row in the
    version table: the upgrade replaces it with the two branches' starts (no-ops) and keeps
    every row of our tables."""
    migration.upgrade(database_url, "0007_sqlite_change_views")
    engine = sa.create_engine(database_url)
    member = {"id": "00000000-0000-4000-8000-000000000007", "ip_address": "198.51.100.7"}
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO midonet_agent_memberships (id, ip_address) "
                                 "VALUES (:id, :ip_address)"), member)
            conn.execute(sa.text(
                "INSERT INTO midonet_tasks (type, data_type, resource_id, data, created_at) "
                "VALUES ('CREATE', 'AGENTMEMBERSHIP', :id, :data, :at)"),
                {"id": member["id"], "data": '{"id": "x"}',
                 "at": datetime.datetime(2026, 12, 1)})
        assert _versions(engine) == ["0007_sqlite_change_views"]
        assert migration.current_revision(engine) == "0007_sqlite_change_views"

        out = _manage_upgrade(database_url, tmp_path)

        assert ("upgraded from 0007_sqlite_change_views to "
                "0008_contract_initial, 0008_expand_initial") in out
        assert _versions(engine) == BRANCH_HEADS
        assert migration.current_revision(engine) == migration.head_revision(database_url)
        with engine.connect() as conn:
            assert [dict(r) for r in conn.execute(sa.text(
                "SELECT id, ip_address FROM midonet_agent_memberships")).mappings()] == [member]
            assert conn.execute(sa.text(
                "SELECT type, data_type, resource_id FROM midonet_tasks")).all() == [
                ("CREATE", "AGENTMEMBERSHIP", member["id"])]
        migration.upgrade(database_url)  # at the heads: nothing to do
        assert _versions(engine) == BRANCH_HEADS
    finally:
        engine.dispose()
