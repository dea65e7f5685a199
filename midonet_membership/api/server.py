"""Serving the WSGI app: cheroot threads in-process, or gunicorn worker processes.

The all-in-one needs the API and the importer in one process (so a commit can wake the
importer directly), which cheroot's embeddable thread pool gives; ``midonet-membership api``
scales out with gunicorn's pre-forked gthread workers.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import gc
import io
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable

from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.workers import threadpool

from midonet_membership.api.threads import MostRecentlyIdleThreads, MostRecentWaiterFirst
from midonet_membership.context import new_request_id

LOG = logging.getLogger(__name__)

MAX_HEADER_BYTES = 1 << 16

# After a 413 the client is usually still sending the body it announced: closing at once
# would make the kernel answer its data with a reset, and a client that sends before it
# reads (urllib, most HTTP libraries) sees EPIPE/ECONNRESET instead of the 413. Like
# nginx's lingering close, the server half-closes, then reads and discards until the client
# closes, stays idle LINGER_IDLE seconds, or LINGER_SECONDS / LINGER_BYTES run out
# (nginx: 5 s idle, 30 s in all). The bounds keep a client that never stops from holding
# a request thread: at most LINGER_SECONDS per refused request.
LINGER_SECONDS = 10.0
LINGER_IDLE = 2.0
LINGER_BYTES = 64 << 20

# webob's names, as the app's own NeutronError bodies use them
_ERROR_TYPES = {400: "HTTPBadRequest", 403: "HTTPForbidden", 404: "HTTPNotFound",
                405: "HTTPMethodNotAllowed", 408: "HTTPRequestTimeout",
                413: "HTTPRequestEntityTooLarge", 414: "HTTPRequestURITooLong",
                417: "HTTPExpectationFailed", 431: "HTTPRequestHeaderFieldsTooLarge",
                500: "HTTPInternalServerError", 501: "HTTPNotImplemented",
                503: "HTTPServiceUnavailable", 505: "HTTPVersionNotSupported"}


def neutron_error_body(status: int, message: str, request_id: str) -> bytes:
    """What the app would answer, for a request the HTTP server refused before the app."""
    return json.dumps({"NeutronError": {
        "type": _ERROR_TYPES.get(status, "HTTPError"),
        "message": message or f"The server refused the request ({status}).",
        "detail": ""}}).encode()


def linger(sock: socket.socket) -> int:
    """Half-close ``sock`` and discard what the peer still sends, within the bounds above.

    The caller closes the socket afterwards. Returns the bytes discarded.
    """
    try:
        sock.shutdown(socket.SHUT_WR)  # our answer is complete: FIN after it, not RST
    except OSError:
        return 0
    deadline = time.monotonic() + LINGER_SECONDS
    discarded = 0
    while discarded < LINGER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            sock.settimeout(min(LINGER_IDLE, left))
            chunk = sock.recv(1 << 16)
        except OSError:  # idle too long, or reset
            break
        if not chunk:  # the client read our answer and closed
            break
        discarded += len(chunk)
    return discarded


# cheroot's list, as a set (cheroot's HeaderReader looks each header's name up in a list)
_COMMA_SEPARATED = frozenset(cheroot_server.comma_separated_headers)


class _HeaderReader(cheroot_server.HeaderReader):
    """cheroot's reader of a request's headers (``HTTPRequest.header_reader``, an
    interface cheroot lets a server replace), refusing what would let a proxy in front
    and this server frame different requests from the same bytes (request smuggling),
    as gunicorn (``midonet-membership api``) refuses them: a ``Content-Length`` sent
    twice (cheroot let the last one win; RFC 9112 §6.3), ``Content-Length`` beside
    ``Transfer-Encoding`` (cheroot used the chunks and kept the connection; §6.1), and
    obsolete line folding (cheroot let a continuation line replace the header's value;
    §5.2). cheroot answers the ValueError with a 400 (:meth:`_NeutronErrorRequest.
    simple_response`) and closes the connection. Otherwise cheroot's rules, line for line,
    and no slower: a urllib POST's 7 headers read from memory took 5.3 µs here and 6.1 µs
    in cheroot's (best of 30 rounds of 20,000 each, alternated, on a busy 2-core
    machine), its list of comma-separated names being a set here. tests/e2e/
    test_http_framing.py fails if cheroot stops calling it."""

    def __call__(self, rfile, hdict=None):
        if hdict is None:
            hdict = {}
        while True:
            line = rfile.readline()
            if not line:
                raise ValueError("Illegal end of headers.")
            if line == b"\r\n":
                break
            if not line.endswith(b"\r\n"):
                raise ValueError("HTTP requires CRLF terminators")
            if line[:1] in b" \t":
                raise ValueError("Illegal continuation line: obsolete line folding is not "
                                 "accepted (RFC 9112, section 5.2)")
            try:
                name, value = line.split(b":", 1)
            except ValueError:
                raise ValueError("Illegal header line.") from None
            value = value.strip()
            name = name.strip().title()
            if name in hdict:
                if name in _COMMA_SEPARATED:
                    value = hdict[name] + b", " + value if hdict[name] else value
                elif name == b"Content-Length":
                    raise ValueError("Content-Length was sent more than once (RFC 9112, "
                                     "section 6.3)")
            hdict[name] = value
        if b"Content-Length" in hdict and b"Transfer-Encoding" in hdict:
            raise ValueError("Content-Length and Transfer-Encoding were both sent "
                             "(RFC 9112, section 6.1)")
        return hdict


class _NeutronErrorRequest(cheroot_server.HTTPRequest):
    """cheroot's own error answers (a request line, header or body framing it cannot parse,
    a full queue) in Neutron's JSON with a request id, like every other response; and a
    lingering close after any 413, the app's or cheroot's."""

    def send_headers(self):
        if int(self.status[:3]) == 413:
            self.conn.linger_on_close = True
        # cheroot adds a Date it formats for every response; ours is formatted once a second.
        self.outheaders.append((b"Date", _http_date().encode("ascii")))
        return super().send_headers()

    def simple_response(self, status, msg=""):
        status = str(status)
        code = int(status[:3])
        if code == 413:
            self.conn.linger_on_close = True
        if code < 400:
            return super().simple_response(status, msg)
        if isinstance(msg, bytes):
            msg = msg.decode("iso-8859-1")
        request_id = new_request_id()
        headers = [("x-openstack-request-id", request_id),
                   ("Content-Type", "application/json")]
        if code in (413, 414):  # as cheroot does: close; HTTP/1.0 has no 413/414
            self.close_connection = True
            if self.response_protocol == "HTTP/1.1":
                headers.append(("Connection", "close"))
            else:
                status, code = "400 Bad Request", 400
        elif not self.ready and self.response_protocol == "HTTP/1.1":
            # A request it could not parse (its request line, its headers): cheroot closes
            # the connection after this answer (HTTPConnection.communicate), and says so.
            self.close_connection = True
            headers.append(("Connection", "close"))
        body = neutron_error_body(code, msg, request_id)
        headers.append(("Content-Length", str(len(body))))
        head = f"{self.server.protocol} {status}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        try:
            self.conn.wfile.write(head.encode("iso-8859-1") + body)
        except OSError as ex:
            if ex.args and ex.args[0] not in cheroot_server.errors.socket_errors_to_ignore:
                raise
        return None

    def respond(self):
        """The response's head and body in one send (:class:`_SocketWriter`)."""
        wfile = self.conn.wfile
        wfile.hold()
        try:
            super().respond()
        except BaseException:
            with contextlib.suppress(OSError):
                wfile.flush()
            raise
        wfile.flush()

    header_reader = _HeaderReader()


class _SocketReader(io.BufferedReader):
    """cheroot's socket reader on the C ``BufferedReader``: cheroot builds its own on
    ``_pyio``'s, pure Python, whose ``readline`` and ``peek`` took 13 % of the all-in-one's
    GIL time serving shows at concurrency 8 (``py-spy --gil``)."""

    def __init__(self, sock: socket.socket, bufsize: int = io.DEFAULT_BUFFER_SIZE) -> None:
        super().__init__(socket.SocketIO(sock, "rb"), bufsize)
        self._sock = sock
        self.bytes_read = 0  # read by cheroot's statistics, which we never enable

    def has_data(self) -> bool:
        """Whether a request can be read without waiting (cheroot asks after each answer
        on a kept-alive connection): buffered bytes, or bytes a non-blocking read gets."""
        timeout = self._sock.gettimeout()
        self._sock.setblocking(False)
        try:
            return bool(self.peek(1))
        except (OSError, ValueError):  # reset or closed: the selector finds it readable
            return False
        finally:
            self._sock.settimeout(timeout)


class _SocketWriter:
    """cheroot's socket writer without its ``_pyio`` buffer, which it flushed at every
    write anyway. While a response is :meth:`hold`-ing, writes wait for :meth:`flush`: the
    head cheroot writes and the body after it leave in one ``send``, not two."""

    JOIN_AT_MOST = 1 << 16  # a larger body is sent after its head, not copied onto it

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._held: list[bytes] | None = None
        self.bytes_written = 0  # read by cheroot's statistics, which we never enable

    def hold(self) -> None:
        self._held = []

    def write(self, data: bytes) -> int:
        if self._held is not None:
            self._held.append(data)
        else:
            self._send(data)
        return len(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if not held:
            return
        if sum(map(len, held)) <= self.JOIN_AT_MOST:
            self._send(b"".join(held))
        else:
            for data in held:
                self._send(data)

    def _send(self, data: bytes) -> None:
        """Each ``send`` waits at most the socket's timeout, as with cheroot's own writer:
        ``sendall``'s timeout would bound the whole answer and cut off a slow reader of a
        large page."""
        view = memoryview(data)
        while view:
            view = view[self._sock.send(view):]


def _socket_file(sock: socket.socket, mode: str = "r",
                 bufsize: int = io.DEFAULT_BUFFER_SIZE) -> _SocketReader | _SocketWriter:
    return _SocketReader(sock, bufsize) if "r" in mode else _SocketWriter(sock)


class _NeutronErrorConnection(cheroot_server.HTTPConnection):
    RequestHandlerClass = _NeutronErrorRequest
    linger_on_close = False

    def __init__(self, server, sock, makefile=None) -> None:
        """``makefile``, cheroot's ``_pyio`` one (or a TLS adapter's: we configure none),
        gives way to :func:`_socket_file`."""
        super().__init__(server, sock, makefile=_socket_file)

    def close(self) -> None:
        """cheroot closes a connection after a 413 (it will not read a body it refused);
        linger first, so the client that is still sending it reads the 413."""
        if self.linger_on_close and not self.linger:
            try:
                self.wfile.flush()
            except OSError:
                pass
            else:
                linger(self.socket)
        super().close()


class _LingerAfter413:
    """The same lingering close under gunicorn, which closes a connection after a 413
    but drains at most 64 KiB (``gunicorn.util.close_graceful``). Its socket is in the
    environ; the response iterable's ``close()`` runs after the answer was sent and before
    gunicorn closes the socket."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        refused = []

        def start(status: str, headers: list, exc_info=None):
            if status.startswith("413"):
                refused.append(True)
                # gunicorn drops an app's Connection header; its start_response is a
                # method of the response, whose force_close() its workers call themselves
                # (test_oversized_body checks the "Connection: close" this gives).
                force_close = getattr(getattr(start_response, "__self__", None),
                                      "force_close", None)
                if force_close is not None:
                    force_close()
            return start_response(status, headers, exc_info)
        body = self.app(environ, start)
        sock = environ.get("gunicorn.socket")
        if not refused or sock is None:
            return body
        return _ThenLinger(body, sock)


class _ThenLinger:
    def __init__(self, body: Iterable[bytes], sock: socket.socket) -> None:
        self.body = body
        self.sock = sock

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close:
            close()
        self.sock.setblocking(True)
        linger(self.sock)


class ThreadedServer:
    """A cheroot server running in a background thread; ``stop()`` drains and joins."""

    def __init__(self, app: Callable, host: str, port: int, threads: int,
                 active_threads: int) -> None:
        self.server = wsgi.Server((host, port), app, numthreads=threads,
                                  request_queue_size=256, server_name="midonet-membership")
        self.server.ConnectionClass = _NeutronErrorConnection
        _serve_most_recent_waiter_first(self.server.requests, active_threads)
        # cheroot reads request line and headers without limit by default: a client could
        # fill memory with one endless header. 64 KiB holds any token (gunicorn: 8 KiB/field).
        self.server.max_request_header_size = MAX_HEADER_BYTES
        self.server.prepare()  # binds now, so a port in use fails start-up, not a thread
        self.thread = threading.Thread(target=self.server.serve, name="api-server",
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server.bind_addr[1]

    def start(self) -> None:
        freeze_startup_objects()
        self.thread.start()

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=10)


def active_threads_default(database_backend: str) -> int:
    """``api_active_threads`` when unset. SQLite works inside this process: a request
    never waits on another one, and a second active thread only takes turns at the GIL
    (8 clients' creates in the all-in-one: 2,243 and 2,522/s with one, 1,986 and 1,853
    with two). A database server's round trips leave the GIL free, which a second thread
    fills (the all-in-one on PostgreSQL, c=8: creates 1,377 → 1,587/s, first pages
    2,193 → 2,619 from one to two; docs/api-performance.md)."""
    return 1 if database_backend == "sqlite" else 2


def serve_workers(app_factory: Callable[[], Callable], host: str, port: int, workers: int,
                  threads: int) -> None:
    """Run gunicorn in the foreground; each worker builds its own app (and DB pool)."""
    from gunicorn import util
    from gunicorn.app.base import BaseApplication
    from gunicorn.http import wsgi

    # gunicorn answers a request it cannot parse with an HTML page; the workers (forked
    # from this process, which serves nothing else) answer in Neutron's JSON instead, and
    # send each response's head and body in one write.
    util.write_error = _write_neutron_error
    util.http_date = _http_date
    wsgi.Response = _one_write_response(wsgi.Response)

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": f"{host}:{port}", "workers": workers,
                               "threads": threads, "worker_class": _gthread_worker(),
                               "accesslog": None, "errorlog": "-", "loglevel": "warning",
                               "timeout": 60, "graceful_timeout": 10}.items():
                self.cfg.set(key, value)

        def load(self) -> Callable:
            app = _LingerAfter413(app_factory())
            freeze_startup_objects()
            return app

    _Gunicorn().run()


def _serve_most_recent_waiter_first(pool, active_threads: int) -> None:
    """cheroot's thread pool, its requests handed to the thread that went idle last, at
    most ``active_threads`` at once while they move (its queue and its stop request are
    private; set before ``prepare()`` starts the threads)."""
    pool._queue = MostRecentWaiterFirst(pool.min, active=active_threads,
                                        shutdown=threadpool._SHUTDOWNREQUEST)
    pool.get = pool._queue.get


# How long the thread that answered a kept-alive connection waits for that client's next
# request before it hands the connection back to gunicorn's poller.
KEEPALIVE_STAY = 0.002


def _gthread_worker() -> type:
    """gunicorn's gthread worker, its requests served by the most recently idle thread, and
    a client's next request by the thread that answered the last one when it comes at once.

    Why: gunicorn hands a kept-alive connection back to its main thread after every
    response (a done-callback, a pipe write, the poller's register; when the next request
    arrives, a wake-up, unregister, a submit, a thread woken). Without that, the HTTP
    floor of bench/api.py answers about a third more requests a second at c=1 and c=8, and
    our worker spent ~110 µs less CPU on a PostgreSQL show at c=1 (docs/api-performance.md).

    The thread waits ``KEEPALIVE_STAY`` for the next request only while the client has
    been sending its requests that fast (a connection that came back from the poller later
    than that goes back at once after its answer, as stock gunicorn does) and no other
    connection waits for a thread (then it goes back too: a busy client cannot keep a
    thread from the others; one that found every thread staying waits a stay at most).

    And a request costs no system call that changes nothing: gunicorn sets the socket
    blocking again before every request, and drains the body of every request with a
    read timeout set and reset around it, even when nothing is left to read. Each was an
    ``ioctl`` (four a request) and each, like any system call in CPython, a release of
    the GIL that another of the worker's threads takes at c=8 (docs/api-performance.md)."""
    from gunicorn.http.body import LengthReader
    from gunicorn.workers.gthread import ThreadWorker

    class Worker(ThreadWorker):
        def get_thread_pool(self) -> MostRecentlyIdleThreads:
            return MostRecentlyIdleThreads(self.cfg.threads)

        def _keepalive_after(self, conn, keepalive: bool) -> bool:
            """No drain of a body read whole (or empty): nothing of it is left on the
            socket or in its buffer."""
            body = getattr(conn.parser.mesg, "body", None)
            reader = getattr(body, "reader", None)
            if (keepalive and isinstance(reader, LengthReader) and reader.length == 0
                    and not body.failed and body.buf.tell() == 0):
                return True
            return super()._keepalive_after(conn, keepalive)

        def handle(self, conn) -> object:
            if type(conn.sock) is socket.socket:
                conn.sock.__class__ = _ModeKeepingSocket
            returned = getattr(conn, "returned_at", None)
            fast = returned is None or time.monotonic() - returned < KEEPALIVE_STAY
            while True:
                keepalive = super().handle(conn)
                if keepalive is not True:
                    return keepalive
                if not (fast and self.alive and not self.tpool.has_waiting_work()
                        and (conn.parser.unreader.buf.getvalue()
                             or _readable(conn.sock, KEEPALIVE_STAY))):
                    conn.returned_at = time.monotonic()
                    return keepalive
    return Worker


class _ModeKeepingSocket(socket.socket):
    """A socket whose ``setblocking`` and ``settimeout`` make no system call when they
    would leave it as it is: CPython's always do (an ``ioctl``, the GIL released around
    it). A connection's socket becomes one by a change of its class (the same layout), as
    gunicorn's parser holds it already."""

    __slots__ = ()

    def setblocking(self, flag: bool) -> None:
        if not (flag and self.gettimeout() is None):
            super().setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        if not (value is None and self.gettimeout() is None):
            super().settimeout(value)


def _one_write_response(response: type) -> type:
    """gunicorn's ``Response``, its head sent with the first bytes of its body in one
    write: gunicorn writes them apart, two system calls, two TCP segments, and for the
    client a second read. A body sent in chunks (no length given) sends its head first;
    a response without a body sends it at ``close``."""

    class OneWriteResponse(response):
        _head = b""

        def send_headers(self) -> None:
            """Build the head as gunicorn does, held until the body or ``close``."""
            if self.headers_sent:
                return
            lines = self.default_headers()
            lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
            self._head = ("".join(lines) + "\r\n").encode("latin-1")
            self.headers_sent = True

        def _send_head(self) -> None:
            """The head alone, if it has not left yet."""
            self.send_headers()
            head, self._head = self._head, b""
            if head:
                self.sock.sendall(head)

        def _emit_body(self, data: bytes) -> None:
            if self._head and not self.chunked:
                head, self._head = self._head, b""
                self.sock.sendall(head + data)
                return
            self._send_head()
            super()._emit_body(data)

        def sendfile(self, respiter) -> bool:
            self._send_head()
            return super().sendfile(respiter)

        def close(self) -> None:
            self._send_head()
            super().close()

    return OneWriteResponse


def _readable(sock: socket.socket, timeout: float) -> bool:
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(timeout * 1000))


def freeze_startup_objects() -> None:
    """Move what start-up built (modules, the app, its statements: ~95,000 objects in the
    all-in-one) out of the garbage collector's reach before serving. Requests leave little
    garbage, but a full collection walked all of them, holding the GIL: 36 ms in the
    all-in-one's first seconds of serving shows, 0.9 ms frozen (timed by gc.callbacks).
    Start-up's own garbage is collected first, or it would never be."""
    gc.collect()
    gc.freeze()


def _http_date(timestamp: float | None = None) -> str:
    """``gunicorn.util.http_date``, the Date header, formatted once a second instead of
    once a response: ``email.utils.formatdate`` was 3 % of the worker's GIL time serving
    shows at concurrency 8 (py-spy --gil)."""
    return _formatted_date(int(time.time() if timestamp is None else timestamp))


@functools.lru_cache(maxsize=4)
def _formatted_date(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def _write_neutron_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error`` with a NeutronError body and a request id."""
    from gunicorn import util

    request_id = new_request_id()
    body = neutron_error_body(status_int, mesg, request_id)
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"x-openstack-request-id: {request_id}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)
