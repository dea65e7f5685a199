"""kazoo's threading handler, cut down to what hundreds of agents on one host can afford.

kazoo's connection thread calls ``handler.select`` for every packet it sends or receives.
The stock implementation builds, registers and closes a new epoll selector each time: four
system calls and a handful of Python objects per packet. With 200 agents on a 2-core host
woken together by one tunnel zone change, that was a large share of their CPU. ``poll(2)``
has neither the descriptor limit of ``select(2)`` (which is why kazoo moved away from it)
nor epoll's set-up cost.

kazoo also hands every watch event to its callback worker thread. A watch function marked
:class:`ConnectionThreadWatch` never blocks (it only re-arms its watch with an asynchronous
read), so it runs in place on the connection thread: two thread hand-offs fewer per event.
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.handlers.utils import fileobj_to_fd
from kazoo.protocol.states import Callback, WatchedEvent

LOG = logging.getLogger(__name__)

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_TROUBLE = select.POLLERR | select.POLLHUP | select.POLLNVAL


class ConnectionThreadWatch:
    """Marks a watch function that never blocks, to run where the event is read."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[WatchedEvent], None]) -> None:
        self.func = func

    def __call__(self, event: WatchedEvent) -> None:
        self.func(event)


class PollThreadingHandler(SequentialThreadingHandler):
    """Drop-in for ``SequentialThreadingHandler`` (``KazooClient(handler=...)``)."""

    def dispatch_callback(self, callback: Callback) -> None:
        if isinstance(callback.func, ConnectionThreadWatch):
            try:
                callback.func(*callback.args)
            except Exception:  # the connection thread must survive
                LOG.exception("ZooKeeper watch function failed")
        else:
            super().dispatch_callback(callback)

    def select(self, rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any],
               timeout: float | None = None) -> tuple[list, list, list]:
        """``select.select`` semantics: the objects of each list that are ready.

        As with kazoo's own version, a hung-up or failed descriptor counts as ready for what
        was asked, so the caller's next read or write meets the error; ``xlist`` is never
        reported.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be non-negative")
        masks: dict[int, int] = {}
        for objects, mask in ((rlist, _READ), (wlist, _WRITE)):
            for obj in objects:
                fd = fileobj_to_fd(obj)
                masks[fd] = masks.get(fd, 0) | mask
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        ready = dict(poller.poll(None if timeout is None else math.ceil(timeout * 1000)))
        readable = [o for o in rlist if ready.get(fileobj_to_fd(o), 0) & (_READ | _TROUBLE)]
        writable = [o for o in wlist if ready.get(fileobj_to_fd(o), 0) & (_WRITE | _TROUBLE)]
        return readable, writable, []
