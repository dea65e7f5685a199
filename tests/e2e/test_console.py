"""The console in headless Chromium: log in, activate a pending agent by choosing one of its
reported addresses, watch the table change without a reload, deactivate it.

The all-in-one runs with two local agents, as ``make run RUN_ARGS="--agents 2"`` starts it.
Screenshots of what the operator sees are taken on every run; with ``MM_SCREENSHOTS=1``
(``make screenshots``) they are written to ``docs/``, where the README shows them, instead of
a temporary directory, so that an ordinary ``make test`` leaves the tree clean.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import pytest

from tests.fixtures.servers import Server, start_with_agents

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs"
AGENTS = "/v2.0/agents"
MEMBERSHIPS = "/v2.0/agent-memberships"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("MM_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path_factory.mktemp("screenshots")


def _screenshot(page, path: Path, **kw) -> None:
    page.screenshot(path=path, **kw)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server(make_database, tmp_path_factory):
    srv = start_with_agents(tmp_path_factory.mktemp("state"), make_database("sqlite"), 2,
                            liveness_timeout="2")
    yield srv
    srv.stop()


def _agents(server: Server) -> list[dict]:
    return sorted(server.client().get(AGENTS).json["agents"], key=lambda a: a["host"])


def _reported(agent: dict) -> list[str]:
    return [ip for i in agent["configurations"]["interfaces"] for ip in i["ip_addresses"]]


def _login(page, server: Server, token: str | None = None) -> None:
    page.goto(server.url + "/")
    page.get_by_label("Admin token").fill(token or server.token)
    page.get_by_role("button", name="Log in").click()


def _row(page, agent: dict):
    return page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=agent["host"]))


@contextlib.contextmanager
def _activated(api, agent: dict, ip_address: str):
    """``agent`` a member with ``ip_address`` (activated through the API) for the block."""
    assert api.post(MEMBERSHIPS, {"agent_membership": {
        "id": agent["id"], "ip_address": ip_address}}).status == 201
    try:
        yield
    finally:
        api.delete(f"{MEMBERSHIPS}/{agent['id']}")


def test_browser_gets_the_console_and_api_clients_the_versions(server):
    api = server.client()
    html = api.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert html.status == 200 and html.headers["content-type"].startswith("text/html")
    assert b"<table id=\"agents\">" in html.raw
    for accept in (None, "*/*", "application/json"):
        got = api.get("/", headers={"Accept": accept} if accept else {})
        assert got.json["versions"][0]["id"] == "v2.0"
    for path in ("/console/console.js", "/console/console.css"):
        asset = api.get(path)
        assert asset.status == 200 and "default-src 'self'" in asset.headers[
            "content-security-policy"]


def test_wrong_token_is_refused(page, server, shots):
    _login(page, server, token="0" * 64)
    from playwright.sync_api import expect

    expect(page.get_by_role("alert").filter(has_text="Authentication required")).to_be_visible()
    expect(page.get_by_role("table")).to_be_hidden()
    _screenshot(page, shots / "console-login.png")


def test_activate_by_reported_address_then_deactivate(page, server, shots):
    from playwright.sync_api import expect

    first, second = _agents(server)
    address = _reported(first)[0]
    _login(page, server)
    table = page.get_by_role("table", name=re.compile("Pending hosts first"))
    expect(table).to_be_visible()
    expect(_row(page, first)).to_contain_text(first["id"])
    expect(_row(page, second)).to_contain_text(second["id"])
    expect(_row(page, first).get_by_role("cell").nth(4)).to_have_text(re.compile("^pending"))
    expect(page.get_by_text("2 agent(s), 2 pending activation.")).to_be_visible()

    _row(page, first).get_by_role("button", name=f"Activate {first['host']}").click()
    dialog = page.get_by_role("dialog", name="Activate host")
    expect(dialog).to_be_visible()
    dialog.get_by_role("radio", name=re.compile(re.escape(address))).check()
    _screenshot(page, shots / "console-activate.png")
    dialog.get_by_role("button", name="Activate", exact=True).click()
    expect(dialog).to_be_hidden()

    created = server.client().get(f"{MEMBERSHIPS}/{first['id']}")
    assert created.status == 200 and created.json["agent_membership"]["ip_address"] == address
    row = _row(page, first)
    expect(row.get_by_role("cell").nth(3)).to_have_text(f"yes, {address}")
    expect(row.get_by_role("button", name=f"Deactivate {first['host']}")).to_be_visible()
    # the agent's own report (not the admin's intent) turns active without a reload
    expect(row.get_by_role("cell").nth(4)).to_have_text(re.compile("^active"))
    expect(page.get_by_text("2 agent(s), 1 pending activation.")).to_be_visible()
    expect(page.locator("#zone-members")).to_have_text("1")
    expect(page.get_by_role("table", name=re.compile("Last changes")).get_by_role(
        "row").nth(1)).to_contain_text(
        f"CREATE AGENTMEMBERSHIP{first['id']}{address}admin-token from 127.0.0.1")
    _screenshot(page, shots / "console-agents.png", full_page=True)

    row.get_by_role("button", name=f"Deactivate {first['host']}").click()
    confirm = page.get_by_role("dialog", name="Deactivate host?")
    expect(confirm).to_contain_text(address)
    confirm.get_by_role("button", name="Deactivate", exact=True).click()
    expect(confirm).to_be_hidden()
    expect(_row(page, first).get_by_role("cell").nth(3)).to_have_text("no")
    assert server.client().get(f"{MEMBERSHIPS}/{first['id']}").status == 404
    expect(_row(page, first).get_by_role("cell").nth(4)).to_have_text(re.compile("^pending"))


def test_cancelled_deactivation_changes_nothing(page, server):
    from playwright.sync_api import expect

    agent = _agents(server)[1]
    api = server.client()
    with _activated(api, agent, "198.51.100.61"):
        _login(page, server)
        _row(page, agent).get_by_role("button", name=f"Deactivate {agent['host']}").click()
        page.get_by_role("dialog", name="Deactivate host?").get_by_role(
            "button", name="Cancel").click()
        time.sleep(1.5)  # a poll or two: the membership must still be there
        assert api.get(f"{MEMBERSHIPS}/{agent['id']}").status == 200
        expect(_row(page, agent).get_by_role("cell").nth(3)).to_have_text("yes, 198.51.100.61")


def test_changes_made_elsewhere_show_without_a_reload(page, server):
    """The CLI (here: the API) activates a host; the open console shows it within ~1 s."""
    from playwright.sync_api import expect

    agent = _agents(server)[1]
    _login(page, server)
    expect(_row(page, agent).get_by_role("cell").nth(3)).to_have_text("no")
    api = server.client()
    started = time.monotonic()
    with _activated(api, agent, "198.51.100.62"):
        # One poll period is 1 s; the margin is for a loaded machine, not for a slower poll.
        expect(_row(page, agent).get_by_role("cell").nth(3)).to_have_text(
            "yes, 198.51.100.62", timeout=5000)
        shown_after = time.monotonic() - started
        assert shown_after < 5
    expect(_row(page, agent).get_by_role("cell").nth(3)).to_have_text("no", timeout=5000)


def test_api_errors_are_shown_as_the_api_words_them(page, server):
    from playwright.sync_api import expect

    first, second = _agents(server)
    api = server.client()
    with _activated(api, second, "198.51.100.63"):
        _login(page, server)
        _row(page, first).get_by_role("button", name=f"Activate {first['host']}").click()
        dialog = page.get_by_role("dialog", name="Activate host")
        for typed in ("127.0.0.1", "198.51.100.63"):
            dialog.get_by_label("Other tunnel IP address").fill(typed)
            dialog.get_by_role("button", name="Activate", exact=True).click()
            refused = api.post(MEMBERSHIPS, {"agent_membership": {
                "id": first["id"], "ip_address": typed}}).json["NeutronError"]["message"]
            expect(dialog.get_by_role("alert")).to_have_text(refused)
        assert api.get(f"{MEMBERSHIPS}/{first['id']}").status == 404
