"""One kept-alive connection carries many requests, on both servers: requests pipelined in
one packet are all answered in order, and a request that trickles in is answered once it is
whole. The all-in-one reads its sockets through its own buffered reader (api/server.py), and
pipelining is the case where the next request is already in that buffer when cheroot asks
whether the connection has more to read."""

from __future__ import annotations

import json
import socket
import time

PATH = "/v2.0/agent-memberships"


def _get(server, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Auth-Token: {server.token}\r\n"
            "Accept: application/json\r\n\r\n").encode()


def _read_response(stream) -> tuple[int, dict[str, str], bytes]:
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, stream.read(int(headers["content-length"]))


def test_pipelined_requests_are_answered_in_order(each_server):
    expected = {"/v2.0/extensions": (200, "extensions"),
                f"{PATH}?limit=1": (200, "agent_memberships"),
                f"{PATH}/{'0' * 8}-nope": (404, "NeutronError"),
                f"{PATH}.json": (200, "agent_memberships")}
    with socket.create_connection(("127.0.0.1", each_server.port), timeout=10) as sock:
        sock.sendall(b"".join(_get(each_server, p) for p in expected))
        stream = sock.makefile("rb")
        answers = [_read_response(stream) for _ in expected]
    assert [(status, next(iter(json.loads(body)))) for status, _, body in answers] == list(
        expected.values())
    ids = [headers["x-openstack-request-id"] for _, headers, _ in answers]
    assert len(set(ids)) == len(ids)


def test_a_request_that_trickles_in_is_answered_when_whole(each_server):
    request = _get(each_server, f"{PATH}?limit=1")
    with socket.create_connection(("127.0.0.1", each_server.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        sock.sendall(request)
        assert _read_response(stream)[0] == 200  # the connection is now kept alive
        for part in (request[:7], request[7:30], request[30:]):
            sock.sendall(part)
            time.sleep(0.3)
        status, headers, body = _read_response(stream)
    assert status == 200
    assert "agent_memberships" in json.loads(body)
