"""Our extension inside a real neutron-server (tests/fixtures/neutron.py), on MariaDB.

The conformance suite runs against it too (test_api_conformance.py, target "neutron"); this
module checks what only Neutron has: its migrations command (with the expand and contract
branches of its rolling upgrades), the plugin's CONFIG task, real Keystone tokens in front of
Neutron, and that memberships written through neutron-server and through our server reach the
same DEFAULT tunnel zone through our importer.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from midonet_membership import nsdb
from midonet_membership.db import migration
from midonet_membership.db.migration import VERSION_TABLE, head_revision
from tests.fixtures.neutron import NeutronServer, neutron_venv_or_skip
from tests.fixtures.servers import ApiClient

PATH = "/v2.0/agent-memberships"
OUR_TABLES = {"midonet_agent_memberships", "midonet_tasks", "midonet_task_state"}
pytestmark = pytest.mark.mariadb


def body(host: str, ip: str) -> dict:
    return {"agent_membership": {"id": host, "ip_address": ip}}


def _tables_and_version(url: str) -> tuple[set[str], str | None]:
    """Our version table's revisions (one per branch) joined as ``head_revision`` joins."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        version = None
        if VERSION_TABLE in tables:
            with engine.connect() as conn:
                version = ", ".join(sorted(conn.execute(
                    sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())) or None
        return tables, version
    finally:
        engine.dispose()


def _config_tasks(url: str) -> list[dict]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT type, data FROM midonet_tasks WHERE data_type = "
                                    "'CONFIG' ORDER BY id")).mappings().all()
    engine.dispose()
    return [{"type": r["type"], "data": json.loads(r["data"])} for r in rows]


def test_db_manage_subproject_upgrade_head_creates_only_our_tables(make_database, tmp_path):
    neutron_venv_or_skip()
    url = make_database("mariadb")
    server = NeutronServer(tmp_path, url)  # its config file only; nothing is started
    done = server.db_manage("--subproject", "midonet-membership", "upgrade", "head")
    assert done.returncode == 0, done.stderr[-3000:]
    tables, version = _tables_and_version(url)
    assert OUR_TABLES <= tables
    assert "networks" not in tables  # Neutron's own tables were not part of it
    assert version == head_revision(url)


def test_db_manage_upgrade_heads_runs_neutrons_then_ours(neutron_server):
    # The session's server was migrated with plain `neutron-db-manage upgrade heads`.
    tables, version = _tables_and_version(neutron_server.database_url)
    assert {"networks", "ports", "alembic_version"} | OUR_TABLES <= tables
    assert version == head_revision(neutron_server.database_url)
    current = neutron_server.db_manage("--subproject", "midonet-membership", "current")
    assert current.returncode == 0, current
    assert all(f"{head} (head)" in current.stdout for head in version.split(", ")), current


def _output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


def test_db_manage_rolling_upgrade_commands_work_with_our_subproject(neutron_server):
    """Neutron's rolling-upgrade commands run over every installed subproject and want its
    expand and contract branches (`upgrade --expand`/`--contract` resolve `expand@head` and
    `contract@head`, `has_offline_migrations` looks up the contract head) and
    `check_migration` its layout (labels, branch points, EXPAND_HEAD/CONTRACT_HEAD files):
    with ours installed each works for the whole deployment."""
    for args in (("upgrade", "--expand"), ("upgrade", "--contract"),
                 ("has_offline_migrations",), ("check_migration",)):
        done = neutron_server.db_manage(*args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (
            args, _output(done)[-3000:])
        if args[0] == "upgrade":
            assert f"Running upgrade ({args[1][2:]}) for midonet-membership" in _output(done)
        if args[0] == "has_offline_migrations":
            assert "No offline migrations pending." in _output(done)
        if args[0] == "check_migration":
            assert "Running branches for midonet-membership" in _output(done)
            assert "does not contain HEAD files" not in _output(done)


def test_db_manage_takes_a_database_at_0007_through_expand_then_contract(make_database,
                                                                         tmp_path):
    """A deployment made before the branches is at 0007 (one row): `upgrade --expand` adds the
    expand branch's start, the contract branch's is then still pending (an offline
    migration, exit 1), and `upgrade --contract` brings the database to both heads."""
    neutron_venv_or_skip()
    url = make_database("mariadb")
    migration.upgrade(url, "0007_sqlite_change_views")
    server = NeutronServer(tmp_path, url)  # its config file only; nothing is started

    def manage(*args: str) -> subprocess.CompletedProcess:
        return server.db_manage("--subproject", "midonet-membership", *args)

    pending = manage("has_offline_migrations")
    assert pending.returncode == 1, _output(pending)[-3000:]
    assert "Need to apply migrations from midonet-membership contract branch" in _output(
        pending)
    expanded = manage("upgrade", "--expand")
    assert expanded.returncode == 0, _output(expanded)[-3000:]
    assert _tables_and_version(url)[1] == "0008_expand_initial"
    assert manage("has_offline_migrations").returncode == 1
    contracted = manage("upgrade", "--contract")
    assert contracted.returncode == 0, _output(contracted)[-3000:]
    tables, version = _tables_and_version(url)
    assert OUR_TABLES <= tables
    assert version == head_revision(url) == "0008_contract_initial, 0008_expand_initial"
    done = manage("has_offline_migrations")
    assert done.returncode == 0 and "No offline migrations pending." in _output(done), done


def test_neutron_lists_our_extension_and_keystone_decides(neutron_server, keystone):
    admin = neutron_server.client()
    aliases = [e["alias"] for e in admin.get("/v2.0/extensions").json["extensions"]]
    assert "agent-membership" in aliases
    host = str(uuid.uuid4())
    assert admin.post(PATH, body(host, "203.0.113.61")).status == 201
    member = ApiClient(neutron_server.url, token=keystone.token("demo"))
    refused = member.post(PATH, body(str(uuid.uuid4()), "203.0.113.62"))
    assert refused.status == 403, refused
    assert refused.json["NeutronError"]["type"] == "PolicyNotAuthorized"
    assert member.get(f"{PATH}/{host}").status == 404
    assert host not in [m["id"] for m in member.get(PATH).json["agent_memberships"]]
    for client in (ApiClient(neutron_server.url),
                   ApiClient(neutron_server.url, token="forged")):
        assert client.get(PATH).status == 401
    assert admin.delete(f"{PATH}/{host}").status == 204


def _restart_with_protocol(server: NeutronServer, protocol: str) -> None:
    text = server.config_file.read_text()
    assert text.count("tunnel_protocol = ") == 1
    server.config_file.write_text(re.sub(r"tunnel_protocol = \w+",
                                         f"tunnel_protocol = {protocol}", text))
    server.stop()
    server.start()


def test_a_keystone_outage_is_503_in_neutron_too(neutron_server, keystone):
    fresh = keystone.new_token("admin")  # not in neutron-server's token cache yet
    with keystone.outage():
        resp = ApiClient(neutron_server.url, token=fresh).get(PATH)
        assert resp.status == 503, resp  # keystonemiddleware's answer, not 401
    assert ApiClient(neutron_server.url, token=fresh).get(PATH).status == 200


def test_the_plugin_writes_config_once_and_again_on_a_change(neutron_server):
    url = neutron_server.database_url
    config_id = "00000000-0000-0000-0000-000000000001"
    first = _config_tasks(url)
    assert first == [{"type": "CREATE", "data": {"id": config_id, "tunnel_protocol": "vxlan"}}]
    try:
        _restart_with_protocol(neutron_server, "vxlan")  # the same [MIDONET]: nothing new
        assert _config_tasks(url) == first
        _restart_with_protocol(neutron_server, "gre")
        assert _config_tasks(url)[1:] == [
            {"type": "UPDATE", "data": {"id": config_id, "tunnel_protocol": "gre"}}]
    finally:
        _restart_with_protocol(neutron_server, "vxlan")
    assert _config_tasks(url)[2:] == [
        {"type": "UPDATE", "data": {"id": config_id, "tunnel_protocol": "vxlan"}}]


def test_the_plugin_refuses_a_bulk_larger_than_one_nsdb_apply(neutron_server, zookeeper_url):
    """The same bound as our server's (tests/integration/test_bulk_limit.py), read from the
    [nsdb] connection in neutron.conf that the importer uses too."""
    limit = nsdb.max_ops_per_apply(zookeeper_url)
    too_many = [{"id": str(uuid.uuid4()), "ip_address": f"198.51.{100 + n // 250}.{1 + n % 250}"}
                for n in range(limit + 1)]
    original = neutron_server.config_file.read_text()
    try:
        neutron_server.config_file.write_text(
            original + f"[nsdb]\nconnection = {zookeeper_url}\n")
        neutron_server.stop()
        neutron_server.start()
        refused = neutron_server.client().post(PATH, {"agent_memberships": too_many})
        assert refused.status == 400, refused
        message = refused.json["NeutronError"]["message"]
        assert f"at most {limit} agent memberships" in message, message
        listed = neutron_server.client().get(PATH).json["agent_memberships"]
        assert not {m["id"] for m in listed} & {m["id"] for m in too_many}  # nothing written
    finally:
        neutron_server.config_file.write_text(original)
        neutron_server.stop()
        neutron_server.start()


def test_an_id_that_cannot_be_a_uuid_is_not_found_through_neutron_either(neutron_server):
    """As on our server. Sent on as it is, MariaDB's collation (case and trailing spaces
    ignored) found the row under another spelling, deleted it, and the DELETE task named
    that spelling: the importer removed nothing, and the host kept its tunnels."""
    client, host = neutron_server.client(), str(uuid.uuid4())
    assert client.post(PATH, body(host, "198.51.100.202")).status == 201
    odd = f"{PATH}/{host.upper()}%20"
    assert (client.get(odd).status, client.delete(odd).status) == (404, 404)
    assert client.get(f"{PATH}/{host.upper()}").status == 200  # a UUID in capitals is one
    assert client.delete(f"{PATH}/{host}").status == 204


def test_an_empty_put_is_refused_with_a_400_not_a_500(neutron_server):
    """Neutron refuses a PUT naming any attribute (none is updatable) itself, and calls the
    plugin for an empty one."""
    client, host = neutron_server.client(), str(uuid.uuid4())
    assert client.post(PATH, body(host, "198.51.100.203")).status == 201
    refused = client.put(f"{PATH}/{host}", {"agent_membership": {}})
    assert refused.status == 400, refused
    assert "cannot be updated" in refused.json["NeutronError"]["message"]
    assert client.delete(f"{PATH}/{host}").status == 204


def _members(url: str) -> dict[str, str]:
    with nsdb.connect(url) as store:
        return store.list_members()


def _wait_for_members(url: str, expected: dict[str, str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            members = _members(url)
        except Exception:  # the NSDB file may not exist yet
            members = {}
        if expected.items() <= members.items() or time.monotonic() > deadline:
            return members
        time.sleep(0.2)


def test_memberships_through_neutron_and_ours_land_in_one_zone(neutron_server, keystone,
                                                               start_server, tmp_path):
    # Our all-in-one on Neutron's own database: its importer reads the journal both write.
    ours = start_server(neutron_server.database_url, conf={
        "DEFAULT": {"auth_strategy": "keystone"},
        "keystone_authtoken": keystone.authtoken_options()})
    through_neutron, through_ours = str(uuid.uuid4()), str(uuid.uuid4())
    created = neutron_server.client().post(PATH, body(through_neutron, "203.0.113.71"))
    assert created.status == 201, created
    created = ApiClient(ours.url, token=keystone.token("admin")).post(
        PATH, body(through_ours, "203.0.113.72"))
    assert created.status == 201, created
    expected = {through_neutron: "203.0.113.71", through_ours: "203.0.113.72"}
    assert _config_tasks(neutron_server.database_url)[-1]["data"]["tunnel_protocol"] == \
        "vxlan"  # our server found the plugin's CONFIG and wrote no other
    zone_url = f"sqlite:///{ours.state_dir / 'nsdb.sqlite'}"
    members = _wait_for_members(zone_url, expected)
    assert expected.items() <= members.items(), members

    # The standalone importer, given neutron-server's own neutron.conf.
    importer = subprocess.Popen(
        [str(Path(sys.executable).parent / "midonet-membership"), "importer",
         "--config-file", str(neutron_server.config_file), "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        members = _wait_for_members(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", expected)
        assert expected.items() <= members.items(), members
    finally:
        importer.terminate()
        output = importer.communicate(timeout=30)[0]
    assert "Traceback" not in output, output
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}") as store:
        zone = store.get_tunnel_zone()
    assert (zone.name, zone.type) == ("DEFAULT", "vxlan")

    for host, server in ((through_neutron, neutron_server), (through_ours, ours)):
        assert ApiClient(server.url, token=keystone.token("admin")).delete(
            f"{PATH}/{host}").status == 204
    deadline = time.monotonic() + 60
    while set(expected) & set(_members(zone_url)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(expected) & set(_members(zone_url))
