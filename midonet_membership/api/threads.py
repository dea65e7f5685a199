"""Request threads that take work most recently idle first, for both HTTP servers.

Both servers' stock pools give a request to the thread that has waited longest, so one
client is served by each thread in turn, each with caches its last request left cold and
one more hand-off of the GIL: a fifth of a PostgreSQL show's CPU in gunicorn's worker at
c=1 (issue 12, docs/api-performance.md).

- gunicorn's gthread worker submits to a ``ThreadPoolExecutor``, which counts a thread
  idle only after the request's done-callback has run. That callback has gunicorn's main
  thread watch the kept-alive connection again, and when the client's next request is
  already there it is submitted before the thread counts as idle: the executor starts
  another one, and from then on its threads take turns. :class:`MostRecentlyIdleThreads`
  replaces it.
- cheroot's threads wait on one ``queue.Queue``, whose condition wakes the oldest waiter:
  :class:`MostRecentWaiterFirst` replaces it, and also keeps all but a few threads out of
  the GIL's way.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_Work = tuple[Future, Callable[..., Any], tuple]
STALL = 0.02  # seconds an item may wait for the active threads before another takes it


class _Sleeper:
    """A thread asleep until someone hands it ``work`` (a pool's thread, a queue's waiter)."""

    def __init__(self) -> None:
        # A plain lock as a binary semaphore (taken: asleep; released by the hand-over): a
        # ``threading.Semaphore`` is Python code around a Condition that allocates a lock
        # at every wait.
        self.wake = threading.Lock()
        self.wake.acquire()
        self.work: Any = None

    def hand(self, work: Any) -> None:
        self.work = work
        self.wake.release()

    def sleep(self) -> Any:
        self.wake.acquire()
        return self.work


class MostRecentlyIdleThreads:
    """The part of ``ThreadPoolExecutor`` gunicorn's gthread worker uses: ``submit`` and
    ``shutdown``. At most ``max_threads`` threads, started as work needs them. Work goes
    to the thread that went idle last; else to a thread finishing its request (publishing
    its result), one piece each; else to a new thread; else it waits its turn."""

    def __init__(self, max_threads: int, name: str = "request") -> None:
        self._max = max_threads
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[_Sleeper] = []  # a stack: the top went idle last
        self._waiting: collections.deque[_Work] = collections.deque()
        self._started = 0
        self._finishing = 0  # threads between their request's end and idleness
        self._stopping = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        work = (future, fn, args)
        with self._lock:
            if self._stopping:
                raise RuntimeError("cannot submit after shutdown")
            if self._idle:
                self._idle.pop().hand(work)
            elif len(self._waiting) < self._finishing or self._started >= self._max:
                self._waiting.append(work)  # a finishing thread takes it in a moment
            else:
                self._started += 1
                threading.Thread(target=self._serve, args=(_Sleeper(), work), daemon=True,
                                 name=f"{self._name}-{self._started}").start()
        return future

    def has_waiting_work(self) -> bool:
        """Whether work waits for a thread (a thread that could stay with its connection
        should take it instead)."""
        return bool(self._waiting)

    def shutdown(self, wait: bool = True) -> None:
        """Idle threads end now, busy ones after their request; ``wait`` is not supported
        (gunicorn passes False)."""
        with self._lock:
            self._stopping = True
            idle, self._idle = self._idle, []
        for thread in idle:
            thread.hand(None)

    def _serve(self, thread: _Sleeper, work: _Work | None) -> None:
        while work is not None:
            self._run(work)
            with self._lock:
                self._finishing -= 1
                work = self._waiting.popleft() if self._waiting else None
                idle = work is None and not self._stopping
                if idle:
                    self._idle.append(thread)
            if idle:
                work = thread.sleep()

    def _run(self, work: _Work) -> None:
        """Run the work, then publish its outcome as a thread that is finishing: the
        done-callback may submit the connection's next request, which then waits for this
        thread rather than starting another."""
        future, fn, args = work
        outcome: tuple[bool, Any] | None = None
        if future.set_running_or_notify_cancel():
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - the future carries it, as in the executor
                outcome = (False, exc)
        with self._lock:
            self._finishing += 1
        if outcome is not None:
            ok, value = outcome
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class MostRecentWaiterFirst:
    """The part of ``queue.Queue`` cheroot's thread pool uses (``put``, ``get``,
    ``qsize``; unbounded), handing an item to the thread that began waiting last.

    At most ``active`` of the ``threads`` hold an item at once while the queue moves: more
    items wait here, and a thread that finishes one takes the next without sleeping. One
    process runs one thread's Python at a time, so more threads at once only take turns
    at the GIL: 8 clients' shows in the all-in-one ran at 2,400-2,700/s with up to 16
    threads at once and 3,970/s with 2 (docs/api-performance.md). Once the oldest item has
    waited ``stall`` seconds the active threads are taken to be stuck (a slow client's
    request is read to its end by the thread that took it) and one more thread takes it:
    slow clients delay the others by a stall each, they cannot stop the server.
    ``shutdown`` (cheroot's stop request) is never held back.
    """

    def __init__(self, threads: int, active: int, stall: float = STALL,
                 shutdown: object = None) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[tuple[float, Any]] = collections.deque()
        self._waiters: list[_Sleeper] = []  # a stack: the top began waiting last
        self._active = threads  # each thread is active until its first get()
        self._most_active = active
        self._stall = stall
        self._shutdown = shutdown
        self._watched = False  # a thread is watching the queue for a stall

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self._lock:
            if self._waiters and (self._active < self._most_active
                                  or item is self._shutdown):
                waiter = self._waiters.pop()
                self._active += item is not self._shutdown
            else:
                self._items.append((time.monotonic(), item))
                waiter = self._watcher()
                if waiter is None:
                    return
                item = _WATCH
        waiter.hand(item)

    def get(self) -> Any:
        with self._lock:
            self._active -= 1
            if self._items:
                return self._taken()
            waiter = self._enlisted()
        item = waiter.sleep()
        while item is _WATCH:
            item = self._watch()
        return item

    def qsize(self) -> int:
        return len(self._items)

    def _watch(self) -> Any:
        """Watch the queue until its oldest item has waited a stall (then take it, and
        hand the watch on if more wait) or the queue is empty (then wait as others do)."""
        pause = self._stall
        while True:
            time.sleep(pause)
            with self._lock:
                if not self._items:
                    self._watched = False
                    waiter = self._enlisted()
                    break
                pause = self._items[0][0] + self._stall - time.monotonic()
                if pause > 0:
                    continue
                self._watched = False
                item = self._taken()
                successor = self._watcher() if self._items else None
            if successor is not None:
                successor.hand(_WATCH)
            return item
        return waiter.sleep()

    def _taken(self) -> Any:
        item = self._items.popleft()[1]
        self._active += item is not self._shutdown
        return item

    def _enlisted(self) -> _Sleeper:
        waiter = _Sleeper()
        self._waiters.append(waiter)
        return waiter

    def _watcher(self) -> _Sleeper | None:
        """A waiting thread to watch the queue, unless one does already (or none waits)."""
        if self._watched or not self._waiters:
            return None
        self._watched = True
        return self._waiters.pop()


_WATCH = object()  # handed to a waiting thread: watch the queue for a stall
