"""The HTTP servers' request threads (api/threads.py): one client, one thread; in the
all-in-one, a few threads at once, and slow clients cannot stop the rest."""

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
    queue = MostRecentWaiterFirst(3, active=3)
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
    queue = MostRecentWaiterFirst(1, active=1)
    for item in range(3):
        queue.put(item)
    assert queue.qsize() == 3
    assert [queue.get() for _ in range(3)] == [0, 1, 2]


def _cheroot_threads(queue, count: int, work) -> list[threading.Thread]:
    """``count`` threads serving ``queue`` as cheroot's do, each item passed to ``work``
    until the stop request (None)."""
    def serve() -> None:
        while (item := queue.get()) is not None:
            work(item)
    threads = [threading.Thread(target=serve, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(queue._waiters) < count:  # noqa: SLF001 - all are waiting
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return threads


def test_cheroots_queue_keeps_the_active_threads_to_their_number_while_the_queue_moves():
    queue = MostRecentWaiterFirst(4, active=2, stall=30)
    release = threading.Event()
    served: list[tuple[str, int]] = []

    def work(item: int) -> None:
        if item < 2:
            release.wait(10)
        served.append((threading.current_thread().name, item))
    threads = _cheroot_threads(queue, 4, work)
    for item in range(6):
        queue.put(item)
    time.sleep(0.1)
    assert served == [] and queue.qsize() == 4, "a third thread took an item"
    release.set()
    deadline = time.monotonic() + 5
    while len(served) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert sorted(item for _, item in served) == [0, 1, 2, 3, 4, 5]
    assert len({name for name, _ in served}) == 2
    for _ in threads:
        queue.put(None)


def test_an_item_stalled_behind_stuck_threads_goes_to_another_after_the_stall():
    """The active thread is stuck (a slow client): each item behind it waits one stall,
    then another thread serves it, while the stuck one still is."""
    queue = MostRecentWaiterFirst(3, active=1, stall=0.05)
    stuck = threading.Event()
    served: dict[str, float] = {}

    def work(item: str) -> None:
        if item == "slow":
            stuck.wait(10)
        served[item] = time.monotonic()
    threads = _cheroot_threads(queue, 3, work)
    try:
        queue.put("slow")
        for item in ("a", "b"):
            put_at = time.monotonic()
            queue.put(item)
            deadline = put_at + 5
            while item not in served:
                assert time.monotonic() < deadline, f"{item} waited for the stuck thread"
                time.sleep(0.001)
            assert served[item] - put_at >= 0.05
        assert "slow" not in served
    finally:
        stuck.set()
        for _ in threads:
            queue.put(None)


def test_cheroots_stop_request_reaches_every_waiting_thread_at_once():
    """Even while the active places are taken (here by a stuck thread)."""
    queue = MostRecentWaiterFirst(4, active=1, stall=30)
    stuck = threading.Event()
    threads = _cheroot_threads(queue, 4, lambda item: stuck.wait(10))
    queue.put("slow")
    for _ in range(3):
        queue.put(None)
    deadline = time.monotonic() + 5
    while sum(t.is_alive() for t in threads) > 1:
        assert time.monotonic() < deadline, "a stop request waited for the stall"
        time.sleep(0.001)
    stuck.set()
    queue.put(None)
    for thread in threads:
        thread.join(5)
    assert not any(t.is_alive() for t in threads)


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
