"""The audit trail: every membership change names who made it, from where, and when.

In the journal (``midonet-db-manage task-list``) for every auth strategy, on every database,
and, with Keystone auth and ``[audit] enabled``, as CADF events from keystonemiddleware's
audit middleware whose request id is the task's transaction id.
"""

from __future__ import annotations

import ast
import json
import re
import time
import uuid

import pytest

from tests.e2e.test_cli import ok, run
from tests.fixtures.servers import ApiClient, free_port

PATH = "/v2.0/agent-memberships"


def body(host: str, ip: str) -> dict:
    return {"agent_membership": {"id": host, "ip_address": ip}}


def task_list(server) -> list[dict]:
    return json.loads(ok(run("midonet-db-manage", "--config-file", str(server.config_file),
                             "--state-dir", str(server.state_dir), "task-list", "-f",
                             "json")).stdout)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_task_list_names_the_admin_token_its_client_and_time(start_server, make_database,
                                                             backend):
    server = start_server(make_database(backend))
    admin = server.client()
    host = str(uuid.uuid4())
    before = time.time()
    created = admin.post(PATH, body(host, "198.51.100.50"))
    assert created.status == 201
    assert admin.delete(f"{PATH}/{host}").status == 204
    tasks = task_list(server)
    [config] = [t for t in tasks if t["data_type"] == "CONFIG"]
    assert config["requested_by"] == "neutron.conf"  # written at start-up, not by a request
    mine = [t for t in tasks if t["resource_id"] == host]
    assert [t["type"] for t in mine] == ["CREATE", "DELETE"]
    for task in mine:
        assert task["requested_by"] == "admin-token"
        assert task["project"] == "admin"
        assert task["requested_from"] == "127.0.0.1"
        written = time.mktime(time.strptime(task["created_at"], "%Y-%m-%d %H:%M:%S"))
        assert abs(written - time.timezone - before) < 120  # UTC, about now
    assert mine[0]["transaction_id"] == created.headers["x-openstack-request-id"]


def test_noauth_records_the_header_identity(start_server, make_database):
    server = start_server(make_database("sqlite"), conf={
        "DEFAULT": {"auth_strategy": "noauth"}})
    client = ApiClient(server.url, headers={"X-Roles": "admin", "X-User-Id": "u-7" * 200,
                                            "X-Project-Id": "p-7"})
    host = str(uuid.uuid4())
    assert client.post(PATH, body(host, "198.51.100.51")).status == 201
    [task] = [t for t in task_list(server) if t["resource_id"] == host]
    # a header longer than the column is cut to fit, never a failed write
    assert task["requested_by"] == ("u-7" * 200)[:255] and task["project"] == "p-7"


def _cadf_events(log: str) -> list[dict]:
    """The payloads keystonemiddleware's log notifier wrote (a Python dict repr)."""
    events = []
    for line in log.splitlines():
        if "midonet_membership.audit" in line and "Event type: audit.http." in line:
            payload = line.split("Payload: ", 1)[1]
            events.append(ast.literal_eval(payload))
    return events


def test_keystone_member_refused_admin_recorded_with_a_cadf_event(start_server,
                                                                  make_database, keystone):
    server = start_server(make_database("sqlite"), conf={
        "DEFAULT": {"auth_strategy": "keystone"},
        "audit": {"enabled": "true"},
        "keystone_authtoken": keystone.authtoken_options()})
    member = ApiClient(server.url, token=keystone.token("demo"))
    refused = member.post(PATH, body(str(uuid.uuid4()), "198.51.100.52"))
    assert refused.status == 403, refused
    assert refused.json["NeutronError"]["type"] == "PolicyNotAuthorized"
    host = str(uuid.uuid4())
    created = ApiClient(server.url, token=keystone.token("admin")).post(
        PATH, body(host, "198.51.100.53"))
    assert created.status == 201, created
    tasks = task_list(server)
    assert [t["resource_id"] for t in tasks if t["data_type"] != "CONFIG"] == [host]
    [task] = [t for t in tasks if t["resource_id"] == host]
    assert (task["requested_by"], task["project"]) == (keystone.user_id("admin"),
                                                       keystone.project_id("admin"))
    assert task["requested_from"] == "127.0.0.1"

    request_id = created.headers["x-openstack-request-id"]
    assert task["transaction_id"] == request_id
    deadline = time.monotonic() + 10
    while True:
        events = _cadf_events(server.output())
        responses = [e for e in events if e.get("reason", {}).get("reasonCode")]
        if len(responses) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_code = {e["reason"]["reasonCode"]: e for e in responses}
    assert set(by_code) == {"403", "201"}, events
    ok_event, refused_event = by_code["201"], by_code["403"]
    assert ok_event["initiator"]["id"] == keystone.user_id("admin")
    assert ok_event["initiator"]["project_id"] == keystone.project_id("admin")
    assert ok_event["initiator"]["host"]["address"] == "127.0.0.1"
    assert ok_event["initiator"]["request_id"] == request_id
    assert ok_event["action"] == "create" and ok_event["outcome"] == "success"
    assert ok_event["requestPath"] == PATH
    assert re.match(r"\d{4}-\d\d-\d\dT", ok_event["eventTime"])
    assert refused_event["initiator"]["id"] == keystone.user_id("demo")
    assert refused_event["outcome"] == "failure"
    # the token itself never reaches the log
    assert keystone.token("admin") not in json.dumps(ok_event)


def test_audit_without_keystone_stops_start_up(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    conf = tmp_path / "neutron.conf"
    conf.write_text(f"[database]\nconnection = sqlite:///{tmp_path}/db.sqlite\n"
                    "[audit]\nenabled = true\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "midonet-membership"), "all-in-one",
         "--config-file", str(conf), "--state-dir", str(tmp_path),
         "--bind", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "[audit] enabled needs auth_strategy = keystone" in result.stderr
