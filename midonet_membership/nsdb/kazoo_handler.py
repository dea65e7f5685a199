"""The kazoo handler every ZooKeeperNSDB client uses: fewer system calls and thread hops.

One tunnel zone change wakes every member's agent at once: each reads the change (a watch
event, a request, a reply) and on a 2-core host with hundreds of agents the fixed cost of
that round in kazoo's connection thread is most of their CPU. Per ZooKeeper message, kazoo
polls the socket in its loop, polls again and ``recv``s the 4-byte length, then polls and
``recv``s the body: five system calls, each also a GIL release and re-acquisition. This
handler, on top of :class:`PollThreadingHandler` (one ``poll(2)`` per select):

- hands kazoo a :class:`BufferedSocket` (plain TCP only) that reads whatever has arrived in
  one ``recv`` and reports it through ``pending()``, the hook kazoo already honours for SSL
  sockets, so the body needs neither a poll nor a ``recv``; and its select knows that a
  socket it just found readable still is until something reads it, so the length needs no
  second poll: two system calls per message instead of five;
- runs :class:`ConnectionThreadWatch` watch functions in place on the connection thread
  instead of handing them to the callback worker (for a watch that only re-arms itself
  with an asynchronous read: a queue append, never a wait).

Everything else (other watches, completions, writes, timeouts, SSL) is kazoo's own.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.protocol.states import Callback, WatchedEvent

from midonet_membership.nsdb.zookeeper_io import PollThreadingHandler

LOG = logging.getLogger(__name__)
_CHUNK = 1 << 16


class BufferedSocket:
    """A connected non-blocking TCP socket whose ``recv`` reads ahead.

    Only what kazoo's connection handler uses is defined; anything else goes to the socket.
    """

    __slots__ = ("sock", "_buffer", "_readable")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self._readable = False  # the last poll found input and nothing has read since

    def pending(self) -> int:
        """Bytes already read from the socket and not yet returned (kazoo skips its poll)."""
        return len(self._buffer)

    def has_input(self) -> bool:
        return bool(self._buffer) or self._readable

    def found_readable(self) -> None:
        """A poll found input (or an error a ``recv`` will raise): true until a ``recv``."""
        self._readable = True

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes: buffered ones first, else one ``recv`` of all there is."""
        if not self._buffer:
            self._readable = False
            data = self.sock.recv(max(size, _CHUNK))
            if len(data) <= size:
                return data
            self._buffer = data[size:]
            return data[:size]
        data = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return data

    def send(self, data: Any) -> int:
        return self.sock.send(data)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self._buffer = b""
        self._readable = False
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def _found_readable(polled: list) -> None:
    for o in polled:
        if type(o) is BufferedSocket:
            o.found_readable()


class ConnectionThreadWatch:
    """Marks a watch function that never blocks, to run where the event is read."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[WatchedEvent], None]) -> None:
        self.func = func

    def __call__(self, event: WatchedEvent) -> None:
        self.func(event)


class ZooKeeperHandler(PollThreadingHandler):
    """``KazooClient(handler=ZooKeeperHandler())``: see the module docstring."""

    def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        sock = super().create_connection(*args, **kwargs)
        return sock if isinstance(sock, ssl.SSLSocket) else BufferedSocket(sock)

    def select(self, rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any],
               timeout: float | None = None) -> tuple[list, list, list]:
        """``PollThreadingHandler.select``, except that a :class:`BufferedSocket` with input
        already known (buffered, or found readable by the last poll and not read since) is
        readable without a poll; the others are then polled without waiting."""
        known = [o for o in rlist if type(o) is BufferedSocket and o.has_input()]
        if not known:
            readable, writable, errored = super().select(rlist, wlist, xlist, timeout)
            _found_readable(readable)
            return readable, writable, errored
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative")
        rest = [o for o in rlist if o not in known]
        if not rest and not wlist:
            return known, [], []
        polled, writable, errored = super().select(rest, wlist, xlist, 0)
        _found_readable(polled)  # only what the poll saw: ``known`` may be buffered input
        ready = {id(o) for o in known + polled}
        return [o for o in rlist if id(o) in ready], writable, errored

    def dispatch_callback(self, callback: Callback) -> None:
        if isinstance(callback.func, ConnectionThreadWatch):
            try:
                callback.func(*callback.args)
            except Exception:  # the connection thread must survive
                LOG.exception("ZooKeeper watch function failed")
        else:
            super().dispatch_callback(callback)
