"""gunicorn's request threads (api/threads.py): one client, one thread."""

from __future__ import annotations

import threading
import time

import pytest

from midonet_membership.api.threads import MostRecentlyIdleThreads, MostRecentWaiterFirst


def _serve_one_client(pool, requests: int) -> list[str]:
    """As gunicorn's main thread does: the done-callback of a request (run by the thread
    that served it) hands in the client's next request at once."""
    served: list[str] = []
    done = threading.Event()

    def request() -> str:
        return threading.current_thread().name

    def next_request(future) -> None:
        served.append(future.result())
        if len(served) < requests:
            pool.submit(request).add_done_callback(next_request)
        else:
            done.set()

    pool.submit(request).add_done_callback(next_request)
    assert done.wait(10)
    return served


def test_one_client_is_served_by_one_thread():
    pool = MostRecentlyIdleThreads(8)
    try:
        served = _serve_one_client(pool, 200)
    finally:
        pool.shutdown(wait=False)
    assert len(served) == 200
    assert set(served) == {served[0]}, f"{len(set(served))} threads served one client"


def test_no_more_threads_than_allowed_and_waiting_work_in_order():
    pool = MostRecentlyIdleThreads(2)
    release = threading.Event()
    order: list[int] = []
    try:
        blocked = [pool.submit(release.wait, 10) for _ in range(2)]
        queued = [pool.submit(order.append, n) for n in range(5)]
        time.sleep(0.05)
        assert order == [], "work ran beyond the two threads allowed"
        release.set()
        for future in blocked + queued:
            future.result(timeout=10)
    finally:
        pool.shutdown(wait=False)
    assert order == [0, 1, 2, 3, 4]
    assert {t.name for t in threading.enumerate() if t.name.startswith("request-")} <= {
        "request-1", "request-2"}


def test_an_exception_reaches_the_future_and_the_thread_serves_on():
    pool = MostRecentlyIdleThreads(1)
    try:
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(timeout=10)
        assert pool.submit(lambda: 42).result(timeout=10) == 42
    finally:
        pool.shutdown(wait=False)


def test_shutdown_ends_idle_threads_and_refuses_new_work():
    pool = MostRecentlyIdleThreads(3, name="shutdown-test")
    for future in [pool.submit(time.sleep, 0.01) for _ in range(3)]:
        future.result(timeout=10)
    pool.shutdown(wait=False)
    deadline = time.monotonic() + 5
    while any(t.name.startswith("shutdown-test-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "idle threads outlived shutdown"
        time.sleep(0.01)
    with pytest.raises(RuntimeError):
        pool.submit(time.sleep, 0)


def _waiting_threads(queue, names: list[str], got: list[tuple[str, object]]) -> None:
    """Start one thread per name, each blocked in ``get``, in the order of ``names``."""
    for name in names:
        def take(name=name) -> None:
            got.append((name, queue.get()))
        threading.Thread(target=take, daemon=True).start()
        deadline = time.monotonic() + 5
        while len(queue._waiters) < names.index(name) + 1:  # noqa: SLF001 - it is waiting
            assert time.monotonic() < deadline
            time.sleep(0.001)


def test_cheroots_queue_wakes_the_thread_that_began_waiting_last():
    queue = MostRecentWaiterFirst()
    got: list[tuple[str, object]] = []
    _waiting_threads(queue, ["first", "second", "third"], got)
    queue.put("a")
    deadline = time.monotonic() + 5
    while not got:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert got == [("third", "a")]
    queue.put("b")
    queue.put("c")
    deadline = time.monotonic() + 5
    while len(got) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert dict(got[1:]) == {"second": "b", "first": "c"}  # (they may append in any order)


def test_cheroots_queue_keeps_items_in_order_while_no_thread_waits():
    queue = MostRecentWaiterFirst()
    for item in range(3):
        queue.put(item)
    assert queue.qsize() == 3
    assert [queue.get() for _ in range(3)] == [0, 1, 2]


def test_a_burst_submitted_while_a_thread_finishes_starts_threads_for_all_but_one():
    """Work submitted by a done-callback waits for the thread that is finishing, but only
    one piece: three pieces that can only end together must get threads of their own."""
    pool = MostRecentlyIdleThreads(4)
    together = threading.Barrier(3, timeout=5)
    burst: list = []
    try:
        first = pool.submit(lambda: None)
        first.add_done_callback(
            lambda _: burst.extend(pool.submit(together.wait) for _ in range(3)))
        first.result(timeout=5)
        deadline = time.monotonic() + 5
        while len(burst) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        for future in burst:
            future.result(timeout=10)  # BrokenBarrierError if they ran one after another
    finally:
        pool.shutdown(wait=False)
