"""``midonet-membership api`` keeps what gunicorn brings with its own thread pool in the
worker (api/threads.py): a killed worker is replaced, ``SIGHUP`` replaces the workers
without refusing a request, and eight clients at once are all answered; and its bodies
are read as the all-in-one's are (the app reads gunicorn's input directly)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
import uuid

from tests.fixtures.importer import wait_until
from tests.fixtures.servers import ProductionApi, post_slowly

PATH = "/v2.0/agent-memberships"


def _workers(master: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == master:
                found.add(int(entry))
    return found


def _answers(client) -> bool:
    try:
        return client.get(f"{PATH}?limit=1").status == 200
    except OSError:
        return False


def test_a_killed_worker_is_replaced(tmp_path, make_database):
    server = ProductionApi(tmp_path, make_database("sqlite"))
    try:
        client = server.client()
        assert client.get(f"{PATH}?limit=1").status == 200
        killed, = _workers(server.process.pid)
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: _workers(server.process.pid) - {killed} and _answers(client),
                   timeout=30)
        assert killed not in _workers(server.process.pid)
    finally:
        server.stop()


def test_sighup_replaces_the_workers_and_every_request_is_answered(tmp_path, make_database):
    server = ProductionApi(tmp_path, make_database("sqlite"))
    statuses: list[int] = []
    stop = threading.Event()

    def ask() -> None:
        client = server.client()  # a new connection per request: none outlives a worker
        while not stop.is_set():
            statuses.append(client.get(f"{PATH}?limit=1").status)

    try:
        before = _workers(server.process.pid)
        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(0.3)
        os.kill(server.process.pid, signal.SIGHUP)
        wait_until(lambda: _workers(server.process.pid) and not (
            _workers(server.process.pid) & before), timeout=30)
        time.sleep(0.3)
        stop.set()
        asking.join(30)
    finally:
        stop.set()
        server.stop()
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {set(statuses)}"


def test_eight_clients_at_once_are_all_answered(tmp_path, make_database):
    server = ProductionApi(tmp_path, make_database("sqlite"))
    created: list[int] = []

    def create(n: int) -> None:
        client = server.client()
        for i in range(25):
            created.append(client.post(PATH, {"agent_membership": {
                "id": str(uuid.uuid4()), "ip_address": f"192.0.2.{n * 25 + i + 1}"}}).status)

    try:
        clients = [threading.Thread(target=create, args=(n,)) for n in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        listed = server.client().get(f"{PATH}?limit=500").json["agent_memberships"]
    finally:
        server.stop()
    assert created == [201] * 200
    assert len(listed) == 200


def _first_page(conn: http.client.HTTPConnection, headers: dict[str, str]) -> int:
    """A GET on the kept-alive ``conn``, read to its end; its status."""
    conn.request("GET", f"{PATH}?limit=1", headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_a_client_that_never_pauses_does_not_keep_the_only_thread_from_another(
        tmp_path, make_database):
    """One request thread. Client A sends its next request the moment each answer arrives,
    on one kept-alive connection, so the thread that answered it could stay with it for
    ever (server.py's KEEPALIVE_STAY). Client B, on a connection of its own, is answered
    all the same, its requests taking turns with A's."""
    server = ProductionApi(tmp_path, make_database("sqlite"), conf="[DEFAULT]\napi_threads = 1\n")
    headers = {"X-Auth-Token": server.token}
    answered_a: list[int] = []
    stop = threading.Event()

    def client_a() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        while not stop.is_set():
            answered_a.append(_first_page(conn, headers))
        conn.close()

    a = threading.Thread(target=client_a)
    try:
        a.start()
        wait_until(lambda: len(answered_a) > 100, timeout=30)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        a_seen, latencies = [len(answered_a)], []
        for _ in range(50):
            started = time.monotonic()
            assert _first_page(conn, headers) == 200
            latencies.append(time.monotonic() - started)
            a_seen.append(len(answered_a))
        conn.close()
    finally:
        stop.set()
        a.join(30)
        server.stop()
    # Turns: A is answered between most of B's answers (a thread that stayed with either
    # client would leave the other waiting until that client paused: B's first request
    # for up to seconds, then A through all of B's, 0 or 1 turns), and B waits a request
    # of A's at most. Not every time: A's next request may reach the thread's queue only
    # after the thread has taken B's.
    turns = sum(after > before for before, after in zip(a_seen[1:], a_seen[2:], strict=False))
    assert turns >= 20, (turns, sorted(latencies)[-3:])
    assert max(latencies) < 1.0, sorted(latencies)[-3:]


def test_a_slow_body_is_read_whole_and_a_cut_one_refused(tmp_path, make_database):
    server = ProductionApi(tmp_path, make_database("sqlite"))
    try:
        host = str(uuid.uuid4())
        raw = json.dumps({"agent_membership": {"id": host, "ip_address": "192.0.2.78"}})
        created = post_slowly(server.port, server.token, PATH, raw.encode())
        assert created.status == 201, created
        assert created.json["agent_membership"]["id"] == host
        cut = post_slowly(server.port, server.token, PATH, raw.encode()[:30],
                          announced=len(raw))
        assert cut.status == 400, cut
        assert "could not be read" in cut.json["NeutronError"]["message"]
        assert server.client().get(f"{PATH}/{host}").status == 200
    finally:
        server.stop()


def test_the_next_request_on_a_connection_is_read_from_its_first_byte(tmp_path,
                                                                     make_database):
    """After a body the app left unread (a 404 or 405 before any reading) and after one it
    read whole, the next request on the kept-alive connection is answered as itself."""
    server = ProductionApi(tmp_path, make_database("sqlite"))
    headers = {"X-Auth-Token": server.token, "Content-Type": "application/json"}
    created = json.dumps({"agent_membership": {"id": str(uuid.uuid4()),
                                               "ip_address": "192.0.2.79"}})
    unread = json.dumps({"agent_membership": {"note": "x" * 3000}})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        answers = []
        for method, path, body in [("POST", "/v2.0/no-such-resources", unread),
                                   ("GET", f"{PATH}?limit=1", None),
                                   ("POST", PATH, created),
                                   ("GET", f"{PATH}?limit=5", None),
                                   ("PUT", f"{PATH}/{uuid.uuid4()}", unread),
                                   ("GET", f"{PATH}?limit=5", None)]:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            answers.append((resp.status, json.loads(resp.read() or b"null")))
        conn.close()
    finally:
        server.stop()
    assert [status for status, _ in answers] == [404, 200, 201, 200, 405, 200], answers
    assert len(answers[3][1]["agent_memberships"]) == 1
    assert answers[5][1] == answers[3][1]


def test_a_client_stalled_in_a_body_left_unread_frees_the_only_thread(tmp_path,
                                                                      make_database):
    """A client announces a body, sends a little of it and stops; the app answers 404
    without reading it. The worker drains the rest before the connection can serve
    another request, for 5 s at most (gunicorn's worker data timeout), then closes it:
    the only request thread is free again, and another client is answered."""
    server = ProductionApi(tmp_path, make_database("sqlite"), conf="[DEFAULT]\napi_threads = 1\n")
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        stalled.sendall(f"POST /v2.0/no-such-resources HTTP/1.1\r\nHost: 192.0.2.1\r\n"
                        f"X-Auth-Token: {server.token}\r\nContent-Length: 5000\r\n\r\n"
                        .encode() + b"{" * 100)
        answer = stalled.makefile("rb")
        assert answer.readline().startswith(b"HTTP/1.1 404")
        started = time.monotonic()
        other = server.client().get(f"{PATH}?limit=1")
        waited = time.monotonic() - started
        assert other.status == 200
        rest = answer.read()  # returns once the server has closed the connection
        assert rest.rstrip().endswith(b"}")  # the 404's NeutronError, then the close
    finally:
        stalled.close()
        server.stop()
    assert 3 < waited < 10, waited
