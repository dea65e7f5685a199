"""Requests that get stuck do not hold up the others, on both servers. The all-in-one lets
only one thread (two on a database server) serve at once while requests move
(``api_active_threads``, api/threads.py): a request stuck in that thread, reading a slow
client or waiting for the database, must not keep the rest waiting with it."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
import uuid

import sqlalchemy as sa

from tests.e2e.test_keep_alive import PATH, _get, _read_response


def test_clients_stalled_mid_request_do_not_hold_up_the_others(each_server):
    """Six clients send half a request and stop: each holds a thread reading it until the
    server's socket timeout (10 s). Requests from others must be handed to other threads
    after a stall, not wait for those timeouts."""
    stalled = [socket.create_connection(("127.0.0.1", each_server.port), timeout=10)
               for _ in range(6)]
    try:
        for sock in stalled:
            sock.sendall(_get(each_server, f"{PATH}?limit=1")[:40])  # headers never end
        time.sleep(0.5)
        started = time.monotonic()
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", each_server.port), timeout=10) as sock:
                sock.sendall(_get(each_server, f"{PATH}?limit=1"))
                assert _read_response(sock.makefile("rb"))[0] == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in stalled:
            sock.close()


def test_reads_are_answered_while_a_write_waits_for_the_database(start_server, make_database):
    """Another process holds SQLite's write lock: the all-in-one's POST waits for it (the
    busy timeout is 30 s) in its one active thread, and GETs are answered meanwhile."""
    url = make_database("sqlite")
    client = start_server(url).client()
    holder = sqlite3.connect(sa.make_url(url).database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    posted: dict = {}
    membership = {"id": str(uuid.uuid4()), "ip_address": "198.51.100.7"}
    post = threading.Thread(target=lambda: posted.update(response=client.post(
        PATH, {"agent_membership": membership})))
    try:
        post.start()
        time.sleep(0.5)
        started = time.monotonic()
        for _ in range(10):
            assert client.get(f"{PATH}?limit=1").status == 200
        assert time.monotonic() - started < 5
        assert post.is_alive(), "the POST did not wait for the write lock"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        post.join(30)
    assert posted["response"].status == 201
    assert client.get(f"{PATH}/{membership['id']}").json["agent_membership"] == membership
