"""Under gunicorn a response's head leaves with its body in one write (api/server.py):
one system call and one TCP segment where gunicorn makes two. Every kind of response
still reaches the client whole, head first; and a connection's socket still changes its
mode whenever gunicorn asks for another one."""

from __future__ import annotations

import http.client
import io
import socket

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from midonet_membership.api.server import _ModeKeepingSocket, _one_write_response

OneWriteResponse = _one_write_response(wsgi.Response)


class RecordingSocket(socket.socket):
    """Our end of a socket pair, which records what each ``sendall`` sent."""

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self.writes: list[bytes] = []

    def sendall(self, data, *args) -> None:
        self.writes.append(bytes(data))
        super().sendall(data, *args)


def _serve(method: str, status: str, headers: list[tuple[str, str]], body: list[bytes],
           file: bytes | None = None) -> tuple[list[bytes], http.client.HTTPResponse, bytes]:
    """One request answered by gunicorn's WSGI response with ours in its place: what each
    write sent, and the response as the client reads it."""
    cfg = Config()
    ours, peer = socket.socketpair()
    sock = RecordingSocket(ours.detach())
    request = f"{method} /v2.0/agent-memberships HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n"
    req = next(RequestParser(cfg, [request.encode()], ("192.0.2.2", 40000)))
    resp, environ = wsgi.create(req, sock, ("192.0.2.2", 40000), ("192.0.2.1", 9696), cfg,
                                response_class=OneWriteResponse)
    resp.start_response(status, headers)
    if file is not None:
        resp.write_file(environ["wsgi.file_wrapper"](io.BytesIO(file)))
    for chunk in body:
        resp.write(chunk)
    resp.close()
    sock.close()
    answer = http.client.HTTPResponse(peer, method=method)
    answer.begin()
    content = answer.read()
    peer.close()
    return sock.writes, answer, content


def test_a_body_of_known_length_leaves_with_its_head_in_one_write():
    body = b'{"agent_membership": {"id": "x"}}'
    writes, answer, content = _serve("GET", "200 OK", [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body)))], [body])
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n" + body)
    assert answer.status == 200 and content == body
    assert answer.getheader("Content-Type") == "application/json"


def test_a_body_in_several_pieces_sends_the_rest_as_it_comes():
    writes, answer, content = _serve("GET", "200 OK", [("Content-Length", "9")],
                                     [b"abc", b"def", b"ghi"])
    assert writes[0].endswith(b"\r\n\r\nabc") and writes[1:] == [b"def", b"ghi"]
    assert content == b"abcdefghi"


def test_a_chunked_body_sends_its_head_alone_then_chunks():
    writes, answer, content = _serve("GET", "200 OK", [], [b"abc", b"defgh"])
    assert answer.getheader("Transfer-Encoding") == "chunked"
    assert writes[0].endswith(b"\r\n\r\n") and writes[0].startswith(b"HTTP/1.1 200 OK")
    assert content == b"abcdefgh"


@pytest.mark.parametrize(("method", "status", "headers"), [
    ("DELETE", "204 No Content", []),
    ("HEAD", "200 OK", [("Content-Length", "12")]),
    ("GET", "200 OK", [("Content-Length", "0")]),
])
def test_a_response_without_a_body_sends_its_head_at_close(method, status, headers):
    writes, answer, content = _serve(method, status, headers,
                                     [b"dropped body"] if method == "HEAD" else [])
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n")
    assert answer.status == int(status.split()[0]) and content == b""


def test_a_file_follows_its_head():
    _, answer, content = _serve("GET", "200 OK", [("Content-Length", "11")], [],
                                file=b"console.css")
    assert answer.status == 200 and content == b"console.css"


def test_a_socket_changes_its_mode_whenever_asked_for_another():
    ours, peer = socket.socketpair()
    sock = _ModeKeepingSocket(fileno=ours.detach())
    try:
        sock.setblocking(True)
        sock.settimeout(None)
        assert sock.gettimeout() is None and sock.getblocking()
        sock.setblocking(False)
        assert sock.gettimeout() == 0.0
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.setblocking(True)
        peer.sendall(b"x")
        assert sock.gettimeout() is None and sock.recv(1) == b"x"
    finally:
        sock.close()
        peer.close()
