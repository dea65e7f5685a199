"""The console with ``auth_strategy = keystone`` against the real Keystone fixture: the
browser logs in with a user name and password, and sees what the user's roles allow."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.keystone import PASSWORD
from tests.fixtures.servers import ApiClient, Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(keystone, make_database, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("state"), make_database("sqlite"), {
        "DEFAULT": {"auth_strategy": "keystone"},
        "keystone_authtoken": keystone.authtoken_options(),
        "agent": {"heartbeat_interval": "0.2", "liveness_timeout": "2"}}, ["--agents", "1"])
    srv.start()
    admin = ApiClient(srv.url, token=keystone.token("admin"))
    deadline = time.monotonic() + 20
    while len(admin.get("/v2.0/agents").json["agents"]) < 1:
        assert time.monotonic() < deadline, srv.output()
        time.sleep(0.1)
    yield srv
    srv.stop()


def _login(page, server: Server, user: str, project: str, password: str = PASSWORD) -> None:
    page.goto(server.url + "/")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Project").fill(project)
    page.get_by_role("button", name="Log in").click()


def test_member_role_login_sees_no_agents_and_can_change_nothing(page, server):
    from playwright.sync_api import expect

    _login(page, server, "demo", "demo")
    expect(page.get_by_text("Logged in as demo (member, reader)")).to_be_visible()
    expect(page.get_by_role("cell", name="No agents to show.")).to_be_visible()
    expect(page.get_by_text("0 agent(s), 0 pending activation.")).to_be_visible()
    expect(page.get_by_role("alert").filter(has_text="disallowed by policy")).to_have_text(
        "(get_deployment_status) is disallowed by policy.")
    expect(page.get_by_role("button", name=re.compile("^(Activate|Deactivate)"))).to_have_count(0)


def test_admin_login_sees_the_agents(page, server, keystone):
    from playwright.sync_api import expect

    _login(page, server, "admin", "admin")
    expect(page.get_by_text("Logged in as admin (admin")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Activate "))).to_have_count(1)
    expect(page.locator("#zone-type")).to_have_text("vxlan")
    # nothing of the login was kept by the server: only the browser tab has the token
    token = page.evaluate("sessionStorage.getItem('midonet-token')")
    assert ApiClient(server.url, token=token).get("/v2.0/agents").status == 200


def test_wrong_password_is_refused_in_keystones_words(page, server):
    from playwright.sync_api import expect

    _login(page, server, "admin", "admin", password="not-the-password")
    expect(page.get_by_role("alert").filter(has_text="Keystone")).to_have_text(
        "Keystone refused the login (401): check the user name, password, project and domain.")
    expect(page.get_by_role("table")).to_be_hidden()


# -- the console's Keystone login behind TLS with a private CA ---------------------------------
class _TlsFront:
    """TLS on a loopback port in front of a plain-HTTP server (as a real Keystone sits behind
    an HTTPS endpoint signed by the deployment's own CA)."""

    def __init__(self, target_port: int, workdir: Path) -> None:
        self.cert = workdir / "ca.pem"
        key = workdir / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(self.cert)],
                       check=True, capture_output=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

        def pump(src, dst) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.close()
                    except OSError:
                        pass

        def serve() -> None:
            while True:
                try:
                    raw, _ = self.listener.accept()
                except OSError:
                    return
                try:
                    tls = context.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError):
                    raw.close()
                    continue
                back = socket.create_connection(("127.0.0.1", target_port))
                threading.Thread(target=pump, args=(tls, back), daemon=True).start()
                threading.Thread(target=pump, args=(back, tls), daemon=True).start()
        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def test_console_keystone_login_trusts_the_ca_the_server_is_configured_with(
        keystone, make_database, tmp_path, start_server):
    """[keystone_authtoken] cafile is how neutron.conf names the CA of an HTTPS Keystone;
    keystonemiddleware uses it. The console's login goes to www_authenticate_uri too and
    must use it as well, or every console login fails on a private-CA deployment."""
    front = _TlsFront(keystone.port, tmp_path)
    try:
        https = f"https://127.0.0.1:{front.port}/v3"
        trusted = ssl.create_default_context(cafile=str(front.cert))
        with urllib.request.urlopen(https, context=trusted, timeout=10) as resp:
            assert resp.status == 200  # the endpoint is fine for a client trusting the CA
        options = {**keystone.authtoken_options(), "www_authenticate_uri": https,
                   "cafile": str(front.cert)}
        server = start_server(make_database("sqlite"), {
            "DEFAULT": {"auth_strategy": "keystone"}, "keystone_authtoken": options})
        login = ApiClient(server.url).post("/console/keystone-token", {
            "username": "admin", "password": "secret", "project": "admin",
            "domain": "Default"})
        assert login.status == 200, (login, server.output()[-1500:])
        assert "admin" in login.json["roles"]
    finally:
        front.close()
