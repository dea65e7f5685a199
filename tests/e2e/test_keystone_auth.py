"""auth_strategy = keystone: the real keystonemiddleware validates tokens against an
identity endpoint. The endpoint is a minimal Keystone v3 (version discovery, password auth
for the service user, token validation) served over HTTP by this test."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from cheroot import wsgi

from tests.fixtures.servers import ApiClient, free_port

PATH = "/v2.0/agent-memberships"
EXPIRES = "2099-01-01T00:00:00.000000Z"
ISSUED = "2026-01-01T00:00:00.000000Z"
TOKENS = {"admin-token": ["admin", "member"], "member-token": ["member"],
          "service-token": ["service", "admin"]}


def _token(base: str, roles: list[str]) -> dict:
    domain = {"id": "default", "name": "Default"}
    return {"token": {
        "methods": ["password"], "expires_at": EXPIRES, "issued_at": ISSUED,
        "user": {"id": "u-" + roles[0], "name": roles[0], "domain": domain},
        "project": {"id": "p-" + roles[0], "name": roles[0], "domain": domain},
        "roles": [{"id": f"r-{r}", "name": r} for r in roles],
        "catalog": [{"type": "identity", "name": "keystone", "id": "identity", "endpoints": [
            {"id": f"e-{i}", "interface": i, "region": "RegionOne", "region_id": "RegionOne",
             "url": f"{base}/v3"} for i in ("public", "internal", "admin")]}]}}


class FakeKeystone:
    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.validations = 0
        self.server = wsgi.Server(("127.0.0.1", self.port), self, numthreads=4)
        self.server.prepare()
        threading.Thread(target=self.server.serve, daemon=True).start()

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"].rstrip("/")
        version = {"id": "v3.14", "status": "stable", "updated": ISSUED,
                   "links": [{"rel": "self", "href": f"{self.base}/v3/"}],
                   "media-types": [{"base": "application/json",
                                    "type": "application/vnd.openstack.identity-v3+json"}]}
        headers = [("Content-Type", "application/json")]
        if path == "" and method == "GET":
            status, body = "300 Multiple Choices", {"versions": {"values": [version]}}
        elif path == "/v3" and method == "GET":
            status, body = "200 OK", {"version": version}
        elif path == "/v3/auth/tokens" and method == "POST":
            status, body = "201 Created", _token(self.base, TOKENS["service-token"])
            headers.append(("X-Subject-Token", "service-token"))
        elif path == "/v3/auth/tokens" and method == "GET":
            self.validations += 1
            subject = environ.get("HTTP_X_SUBJECT_TOKEN")
            if environ.get("HTTP_X_AUTH_TOKEN") != "service-token" or subject not in TOKENS:
                status, body = "404 Not Found", {"error": {"code": 404, "message": "no"}}
            else:
                status, body = "200 OK", _token(self.base, TOKENS[subject])
        else:
            status, body = "404 Not Found", {"error": {"code": 404, "message": path}}
        start_response(status, headers)
        return [json.dumps(body).encode()]

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def keystone_server(start_server, make_database):
    keystone = FakeKeystone()
    server = start_server(make_database("sqlite"), conf={
        "DEFAULT": {"auth_strategy": "keystone"},
        "keystone_authtoken": {
            "www_authenticate_uri": f"{keystone.base}/v3", "auth_url": f"{keystone.base}/v3",
            "auth_type": "password", "username": "neutron", "password": "secret",
            "project_name": "service", "user_domain_name": "Default",
            "project_domain_name": "Default", "interface": "public"}})
    yield server, keystone
    keystone.stop()


def test_keystone_tokens_decide_access(keystone_server):
    server, keystone = keystone_server
    host = str(uuid.uuid4())
    admin = ApiClient(server.url, token="admin-token")
    created = admin.post(PATH, {"agent_membership": {"id": host, "ip_address": "198.51.100.8"}})
    assert created.status == 201, (created, server.output()[-3000:])
    assert keystone.validations >= 1  # the token really was checked with the identity server
    member = ApiClient(server.url, token="member-token")
    assert member.get(PATH).json == {"agent_memberships": []}
    assert member.get(f"{PATH}/{host}").status == 404
    for client in (ApiClient(server.url), ApiClient(server.url, token="forged")):
        resp = client.get(PATH)
        assert resp.status == 401
        assert resp.json["NeutronError"]["type"] == "HTTPUnauthorized"
