"""Invariant 4: only admins read or change memberships; no credentials, no access.

Token mode (the all-in-one default), noauth (header-trusting, loopback only) and a policy
file override, each against a real server. Keystone mode is tested in test_keystone_auth.py.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fixtures.servers import ApiClient, Server, free_port

PATH = "/v2.0/agent-memberships"


def body(host: str, ip: str) -> dict:
    return {"agent_membership": {"id": host, "ip_address": ip}}


REQUEST_ID = re.compile(
    r"^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def neutron_error(resp, status: int) -> dict:
    assert resp.status == status, resp
    assert resp.headers["content-type"].startswith("application/json")
    assert REQUEST_ID.match(resp.headers["x-openstack-request-id"]), resp.headers
    assert list(resp.json) == ["NeutronError"]
    error = resp.json["NeutronError"]
    assert set(error) == {"type", "message", "detail"}
    return error


def count(url: str, table: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        n = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
    engine.dispose()
    return n


@pytest.fixture(scope="module")
def token_server(make_database, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("state"), make_database("sqlite"), {}, []).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def noauth(make_database, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("state"), make_database("sqlite"),
                    {"DEFAULT": {"auth_strategy": "noauth"}}, []).start()
    yield server
    server.stop()


def _as(server, roles: str | None) -> ApiClient:
    headers = {"X-Project-Id": "p1", "X-User-Id": "u1"}
    if roles is not None:
        headers["X-Roles"] = roles
    return ApiClient(server.url, headers=headers)


# -- token mode -----------------------------------------------------------------------------------

def test_the_admin_token_is_long_random_and_private(token_server):
    token_file = token_server.state_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", token_server.token)  # >= 32 bytes, url-safe
    assert token_server.client().get(PATH).status == 200


@pytest.mark.parametrize("token", [None, "", "wrong", "TOKEN+x", "TOKEN[:-1]", "Bearer TOKEN"])
def test_no_or_a_wrong_token_is_401_on_every_operation(token_server, token):
    admin = token_server.client()
    host = str(uuid.uuid4())
    assert admin.post(PATH, body(host, "198.51.100.30")).status == 201
    tasks = count(token_server.database_url, "midonet_tasks")
    real = token_server.token
    given = {None: None, "": "", "wrong": "wrong", "TOKEN+x": real + "x",
             "TOKEN[:-1]": real[:-1], "Bearer TOKEN": f"Bearer {real}"}[token]
    client = ApiClient(token_server.url, headers={} if given is None else {
        "X-Auth-Token": given})
    for resp in (client.get(PATH), client.get(f"{PATH}/{host}"),
                 client.post(PATH, body(str(uuid.uuid4()), "198.51.100.31")),
                 client.delete(f"{PATH}/{host}"), client.get("/v2.0/extensions")):
        error = neutron_error(resp, 401)
        assert error["type"] == "HTTPUnauthorized"
        assert "<html" not in resp.raw.decode().lower()
    assert count(token_server.database_url, "midonet_tasks") == tasks
    assert admin.get(PATH).json == {"agent_memberships": [
        {"id": host, "ip_address": "198.51.100.30"}]}
    assert admin.delete(f"{PATH}/{host}").status == 204


# -- noauth: roles from headers -------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_project_id_header_no_task_can_record_is_400(make_database, tmp_path, backend):
    # noauth takes X-Project-Id as the tasks' tenant_id, a column of 255 characters: on
    # PostgreSQL a longer one (or a NUL) failed the write (500); SQLite kept it whole.
    url = make_database(backend)
    server = Server(tmp_path / "state", url, {"DEFAULT": {"auth_strategy": "noauth"}},
                    []).start()
    try:
        tasks = count(url, "midonet_tasks")
        for project, why in [("p" * 256, "exceeds maximum length of 255"),
                             ("p" * 1000, "exceeds maximum length of 255"),
                             ("a\x00b", "NUL"), ("a\x01b", "control characters")]:
            client = ApiClient(server.url, headers={"X-Roles": "admin", "X-User-Id": "u1",
                                                    "X-Project-Id": project})
            for resp in (client.post(PATH, body(str(uuid.uuid4()), "198.51.100.40")),
                         client.get(PATH)):
                error = neutron_error(resp, 400)
                assert error["type"] == "HTTPBadRequest", error
                assert "X-Project-Id" in error["message"] and why in error["message"], error
        assert count(url, "midonet_tasks") == tasks
        longest = ApiClient(server.url, headers={"X-Roles": "admin", "X-User-Id": "u1",
                                                 "X-Project-Id": "p" * 255})
        host = str(uuid.uuid4())
        assert longest.post(PATH, body(host, "198.51.100.41")).status == 201
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            owner = conn.execute(sa.text("SELECT tenant_id FROM midonet_tasks WHERE "
                                         "resource_id = :h"), {"h": host}).scalar_one()
        engine.dispose()
        assert owner == "p" * 255
    finally:
        server.stop()



def test_an_admin_role_may_do_everything(noauth):
    admin = _as(noauth, "admin")
    host = str(uuid.uuid4())
    assert admin.post(PATH, body(host, "198.51.100.2")).status == 201
    assert admin.get(f"{PATH}/{host}").status == 200
    assert admin.get(PATH).json == {"agent_memberships": [
        {"id": host, "ip_address": "198.51.100.2"}]}
    assert admin.delete(f"{PATH}/{host}").status == 204


@pytest.mark.parametrize("roles", ["member", "reader,member", "", None, "administrator"])
def test_non_admins_learn_nothing_and_change_nothing(noauth, roles):
    admin, other = _as(noauth, "admin"), _as(noauth, roles)
    host = str(uuid.uuid4())
    assert admin.post(PATH, body(host, "198.51.100.3")).status == 201
    tasks = count(noauth.database_url, "midonet_tasks")

    post = other.post(PATH, body(str(uuid.uuid4()), "198.51.100.4"))
    assert neutron_error(post, 403)["type"] == "PolicyNotAuthorized"
    assert "create_agent_membership" in post.json["NeutronError"]["message"]

    # An existing member looks exactly like a missing one.
    missing = str(uuid.uuid4())
    for method in ("GET", "DELETE"):
        existing = neutron_error(other.request(method, f"{PATH}/{host}"), 404)
        unknown = neutron_error(other.request(method, f"{PATH}/{missing}"), 404)
        assert existing["type"] == unknown["type"] == "AgentMembershipNotFound"
        assert existing["message"] == unknown["message"].replace(missing, host)

    listed = other.get(PATH)
    assert listed.status == 200 and listed.json == {"agent_memberships": []}
    paged = other.get(f"{PATH}?limit=1")
    assert paged.status == 200 and paged.json["agent_memberships"] == []
    assert other.get(f"{PATH}?ip_address=198.51.100.3").json == {"agent_memberships": []}

    assert count(noauth.database_url, "midonet_tasks") == tasks
    assert admin.get(f"{PATH}/{host}").json == body(host, "198.51.100.3")  # still there
    assert admin.delete(f"{PATH}/{host}").status == 204


def test_policy_file_overrides_the_defaults(start_server, make_database, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text('"get_agent_membership": "role:reader"\n')
    server = start_server(make_database("sqlite"), conf={
        "DEFAULT": {"auth_strategy": "noauth"}, "oslo_policy": {"policy_file": str(policy)}})
    host = str(uuid.uuid4())
    assert _as(server, "admin").post(PATH, body(host, "198.51.100.5")).status == 201
    reader = _as(server, "reader")
    assert reader.get(PATH).json == {"agent_memberships": [
        {"id": host, "ip_address": "198.51.100.5"}]}
    assert reader.get(f"{PATH}/{host}").json == body(host, "198.51.100.5")
    # may see, may not change
    assert neutron_error(reader.delete(f"{PATH}/{host}"), 403)["type"] == "PolicyNotAuthorized"
    assert neutron_error(reader.post(PATH, body(str(uuid.uuid4()), "198.51.100.6")),
                         403)["type"] == "PolicyNotAuthorized"
    assert _as(server, "member").get(PATH).json == {"agent_memberships": []}
    # The file replaces the rule rather than adding to it: now only readers may look.
    assert _as(server, "admin").get(PATH).json == {"agent_memberships": []}


# -- noauth is loopback only ----------------------------------------------------------------------

def _start_fails(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    """Start the all-in-one with ``config``; it must exit 2 with a message, no traceback."""
    conf = tmp_path / "neutron.conf"
    conf.write_text(config)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "midonet-membership"), "all-in-one",
         "--config-file", str(conf), "--state-dir", str(tmp_path), *args],
        capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize("how", ["--bind", "bind_host", "bind_host ::"])
def test_noauth_refuses_a_non_loopback_bind(tmp_path, how):
    port = free_port()
    config = f"[DEFAULT]\nauth_strategy = noauth\n[database]\nconnection = " \
             f"sqlite:///{tmp_path}/db.sqlite\n"
    if how == "--bind":
        result = _start_fails(tmp_path, config, "--bind", f"0.0.0.0:{port}")
        host = "0.0.0.0"
    else:
        host = "::" if how.endswith("::") else "0.0.0.0"
        config = config.replace("[database]", f"bind_host = {host}\nbind_port = {port}\n"
                                "[database]")
        result = _start_fails(tmp_path, config)
    assert "noauth" in result.stderr and "loopback" in result.stderr
    assert repr(host) in result.stderr
    with pytest.raises(OSError):  # nothing listens
        ApiClient(f"http://127.0.0.1:{port}").get(PATH)
