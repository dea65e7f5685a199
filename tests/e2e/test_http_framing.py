"""How a request and its answer are framed, on both servers: the all-in-one (cheroot) and
``midonet-membership api`` (gunicorn).

A HEAD's Content-Length is the one the GET would carry, and no body follows it (RFC 9110
§8.6, §9.3.2). A request whose length two parsers could read differently (a Content-Length
sent twice, beside Transfer-Encoding, or folded over two lines) is a 400 at once and the
connection is closed: behind a proxy that framed it the other way, the rest of the bytes
would be read as a second, smuggled request (RFC 9112 §6.1, §6.3, §5.2).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid

import pytest

PATH = "/v2.0/agent-memberships"


def _head_and_rest(port: int, raw: bytes, timeout: float = 15) -> tuple[bytes, bytes, float]:
    """Send ``raw``, read until the server closes: the first response's head, every byte
    after it, and how long the server took to close."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest, time.monotonic() - started


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


@pytest.mark.parametrize("path", ["/", "/v2.0/extensions", PATH, f"{PATH}/{uuid.uuid4()}",
                                  "/v2.0/nothing-here"])
def test_head_carries_the_length_of_get_and_no_body(each_server, path):
    token = each_server.token
    request = (f"{{}} {path} HTTP/1.1\r\nHost: 127.0.0.1:{each_server.port}\r\n"
               f"X-Auth-Token: {token}\r\n"
               "Accept: application/json\r\n\r\n")
    conn = http.client.HTTPConnection("127.0.0.1", each_server.port, timeout=15)
    conn.request("GET", path, headers={"X-Auth-Token": token, "Accept": "application/json"})
    got = conn.getresponse()
    body = got.read()
    assert got.status in (200, 404) and len(body) > 0 and json.loads(body)
    assert int(got.getheader("Content-Length")) == len(body)

    # HEAD, then GET on the same connection: a body after the HEAD's head would be read
    # as the start of the GET's answer.
    for _ in range(2):
        conn.request("HEAD", path, headers={"X-Auth-Token": token,
                                            "Accept": "application/json"})
        head = conn.getresponse()
        assert head.status == got.status
        assert int(head.getheader("Content-Length")) == len(body)
        assert head.getheader("Content-Type") == "application/json"
        assert head.read() == b""
        conn.request("GET", path, headers={"X-Auth-Token": token,
                                           "Accept": "application/json"})
        after = conn.getresponse()
        assert after.status == got.status and after.read() == body
    conn.close()

    # and on a connection the server closes after the HEAD: nothing after its head
    head, rest, _ = _head_and_rest(
        each_server.port, request.format("HEAD").replace(
            "\r\n\r\n", "\r\nConnection: close\r\n\r\n").encode())
    assert int(_headers(head)["content-length"]) == len(body)
    assert rest == b""


@pytest.mark.parametrize("framing, why", [
    ("Content-Length: 3\r\nContent-Length: 2", "Content-Length"),
    ("Content-Length: 2\r\nContent-Length: 3", "Content-Length"),
    ("Content-Length: 2\r\nContent-Length: 2", "Content-Length"),
    ("Content-Length: 2\r\nTransfer-Encoding: chunked", ""),
    ("Transfer-Encoding: chunked\r\nContent-Length: 2", ""),
    ("Content-Length: 2\r\nX-Folded: a\r\n b", ""),
], ids=["3-then-2", "2-then-3", "2-twice", "length-then-chunked", "chunked-then-length",
        "folded"])
def test_a_request_two_parsers_could_frame_differently_is_400_at_once(each_server, framing,
                                                                       why):
    # {} then the start of another request: a server that took the other length, or kept
    # the connection, would read "GET ..." as a request of its own.
    smuggled = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: {each_server.token}"
    raw = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: {each_server.token}\r\n"
           f"Content-Type: application/json\r\n{framing}\r\n\r\n{{}}{smuggled}\r\n\r\n")
    head, rest, took = _head_and_rest(each_server.port, raw.encode())
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 400 "), head
    headers = _headers(head)
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert headers["x-openstack-request-id"].startswith("req-")
    error = json.loads(rest[:int(headers["content-length"])])["NeutronError"]
    assert error["type"] == "HTTPBadRequest", error
    assert why.lower() in error["message"].lower(), error
    assert set(error) == {"type", "message", "detail"}
    assert rest[int(headers["content-length"]):] == b""  # one answer, then closed
    assert took < 5  # not after a read of the body timed out (10 s)
    # the server still serves
    conn = http.client.HTTPConnection("127.0.0.1", each_server.port, timeout=15)
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
