"""The console with ``auth_strategy = keystone`` against the real Keystone fixture: the
browser logs in with a user name and password, and sees what the user's roles allow."""

from __future__ import annotations

import re
import time

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
