"""The all-in-one's socket writer (api/server.py), on a real socket pair: a client that reads
a large answer slowly gets all of it, as long as it keeps reading within the server's socket
timeout; only a client that stops reading for that long is cut off."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from midonet_membership.api.server import _socket_file

TIMEOUT = 0.5  # the server socket's timeout (cheroot's is 10 s)


def _pair() -> tuple[socket.socket, socket.socket]:
    server_side, client_side = socket.socketpair()
    server_side.settimeout(TIMEOUT)
    server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    client_side.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    return server_side, client_side


def _read(sock: socket.socket, into: bytearray, size: int, pause: float) -> None:
    while len(into) < size:
        chunk = sock.recv(8192)
        if not chunk:
            return
        into.extend(chunk)
        time.sleep(pause)


def test_a_slow_reader_gets_a_large_answer_whole():
    server_side, client_side = _pair()
    body = os.urandom(1 << 20)
    received = bytearray()
    reader = threading.Thread(target=_read, args=(client_side, received, len(body), 0.01))
    started = time.monotonic()
    reader.start()
    try:
        assert _socket_file(server_side, "wb").write(body) == len(body)
        reader.join(30)
    finally:
        server_side.close()
        client_side.close()
    assert time.monotonic() - started > 2 * TIMEOUT  # slower than one timeout in all
    assert bytes(received) == body


def test_a_reader_that_stops_is_cut_off_after_the_timeout():
    server_side, client_side = _pair()
    try:
        with pytest.raises(TimeoutError):
            _socket_file(server_side, "wb").write(os.urandom(1 << 20))
    finally:
        server_side.close()
        client_side.close()
