"""The SQLite NSDB's watch survives sqlite errors, and an agent shows one meanwhile (issue 8).

The error is a real one: another connection drops the members table under the watch (as a
replaced or damaged file would), so the watch's read fails with "no such table"; recreating
the schema ends it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid

from midonet_membership import nsdb
from midonet_membership.agent import Agent
from midonet_membership.agent.agent import ERROR
from midonet_membership.nsdb.base import AddMember, SetTunnelZone, TunnelZone
from tests.integration.test_agents import HistoryDataPlane

ZONE = TunnelZone("00000000-0000-0000-0000-000000000001", "DEFAULT", "vxlan")


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _break(path: str) -> None:
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("DROP TABLE tunnel_zone_members")
    conn.commit()
    conn.close()


def test_the_watch_reports_a_failure_and_recovers(tmp_path):
    path = str(tmp_path / "nsdb.sqlite")
    url = f"sqlite:///{path}"
    seen: list[dict[str, str]] = []
    lock = threading.Lock()

    def on_zone(_zone, members: dict[str, str]) -> None:
        with lock:
            seen.append(dict(members))

    with nsdb.connect(url, role="cluster") as store:
        store.apply([SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1")], None, 1)
        watch = store.watch_tunnel_zone(on_zone)
        _until(lambda: seen and seen[-1] == {"h1": "198.51.100.1"}, 5, "the first snapshot")
        assert watch.failure() is None
        _break(path)
        _until(lambda: watch.failure() is not None, 5, "the watch to report the failure")
        assert "no such table" in watch.failure()
        with nsdb.connect(url, role="cluster") as repaired:  # recreates the schema
            repaired.apply([AddMember("h2", "198.51.100.2")], 1, 2)
        _until(lambda: seen[-1] == {"h2": "198.51.100.2"}, 10, "the watch to recover")
        assert watch.failure() is None


def test_an_agent_whose_watch_fails_reports_error(tmp_path):
    path = str(tmp_path / "nsdb.sqlite")
    url = f"sqlite:///{path}"
    host = str(uuid.uuid4())
    with nsdb.connect(url, role="cluster") as store:
        store.apply([SetTunnelZone(ZONE), AddMember(host, "198.51.100.1")], None, 1)
    agent = Agent(host, nsdb.connect(url, role="agent"), HistoryDataPlane(),
                  hostname="host-watch", heartbeat_interval=0.1).start()
    try:
        _until(lambda: agent.observed.state != ERROR and agent.state.status == "active", 10,
               "the agent to be active")
        _break(path)
        observed = agent.wait_for_observed(lambda o: o.state == ERROR, timeout=10)
        assert "NSDB watch failed" in observed.reason
    finally:
        agent.stop()
