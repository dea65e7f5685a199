"""Uniqueness is the database's job: racing requests, exactly one winner, one task each.

32 threads released together by a barrier, against the all-in-one on each backend.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from tests.fixtures.servers import Response

PATH = "/v2.0/agent-memberships"
N = 32


def race(calls: list[Callable[[], Response]]) -> list[Response]:
    """Run every call in its own thread, all released at once; responses in call order."""
    barrier = threading.Barrier(len(calls))
    results: list[Response | None] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None for r in results)
    return results


def query(url: str, sql: str, **params) -> list[tuple]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        found = [tuple(r) for r in conn.execute(sa.text(sql), params)]
    engine.dispose()
    return found


def tasks_of_requests(url: str, responses: list[Response]) -> list[tuple]:
    ids = [r.headers["x-openstack-request-id"] for r in responses]
    stmt = sa.text("SELECT type, resource_id FROM midonet_tasks WHERE transaction_id IN :ids "
                   "ORDER BY id").bindparams(sa.bindparam("ids", expanding=True))
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        found = [tuple(r) for r in conn.execute(stmt, {"ids": ids})]
    engine.dispose()
    return found


def post(api, host: str, ip: str) -> Callable[[], Response]:
    return lambda: api.post(PATH, {"agent_membership": {"id": host, "ip_address": ip}})


def split(responses: list[Response], ok: int) -> tuple[Response, list[Response]]:
    assert all(r.status < 500 for r in responses), [r for r in responses if r.status >= 500]
    [winner] = [r for r in responses if r.status == ok]
    return winner, [r for r in responses if r is not winner]


def test_same_id_different_ips_one_winner(api, shared_server):
    url = shared_server.database_url
    host = str(uuid.uuid4())
    responses = race([post(api, host, f"198.51.100.{i + 1}") for i in range(N)])
    winner, losers = split(responses, 201)
    assert [r.status for r in losers] == [409] * (N - 1)
    for r in losers:
        assert r.json["NeutronError"]["type"] == "AgentMembershipExists", r
    ip = winner.json["agent_membership"]["ip_address"]
    assert query(url, "SELECT id, ip_address FROM midonet_agent_memberships") == [(host, ip)]
    assert query(url, "SELECT type FROM midonet_tasks WHERE resource_id = :h",
                 h=host) == [("CREATE",)]
    assert tasks_of_requests(url, [winner]) == [("CREATE", host)]
    assert tasks_of_requests(url, losers) == []


def test_same_ip_different_ids_one_winner(api, shared_server):
    url = shared_server.database_url
    hosts = [str(uuid.uuid4()) for _ in range(N)]
    responses = race([post(api, h, "198.51.100.77") for h in hosts])
    winner, losers = split(responses, 201)
    assert [r.status for r in losers] == [409] * (N - 1)
    host = winner.json["agent_membership"]["id"]
    for r in losers:
        error = r.json["NeutronError"]
        assert error["type"] == "TunnelIpAddressInUse" and host in error["message"], r
    assert query(url, "SELECT id, ip_address FROM midonet_agent_memberships") == [
        (host, "198.51.100.77")]
    assert tasks_of_requests(url, responses) == [("CREATE", host)]


def test_racing_deletes_one_winner(api, shared_server):
    url = shared_server.database_url
    host = str(uuid.uuid4())
    assert post(api, host, "198.51.100.78")().status == 201
    responses = race([lambda: api.delete(f"{PATH}/{host}")] * N)
    winner, losers = split(responses, 204)
    assert [r.status for r in losers] == [404] * (N - 1)
    assert query(url, "SELECT id FROM midonet_agent_memberships") == []
    assert tasks_of_requests(url, responses) == [("DELETE", host)]


def test_create_delete_churn_keeps_table_and_journal_in_step(api, shared_server, rounds=4):
    """Each thread adds and removes the same member over and over; afterwards the tasks of
    that member alternate CREATE/DELETE, one per success, and end in the table's state."""
    url = shared_server.database_url
    host = str(uuid.uuid4())
    lock = threading.Lock()
    statuses: list[int] = []

    def churn() -> Response:
        last = None
        for _ in range(rounds):
            for call in (post(api, host, "198.51.100.79"),
                         lambda: api.delete(f"{PATH}/{host}")):
                last = call()
                with lock:
                    statuses.append(last.status)
        return last
    race([churn] * N)
    tasks = [t for (t,) in query(url, "SELECT type FROM midonet_tasks WHERE resource_id = :h "
                                 "ORDER BY id", h=host)]
    assert tasks == ["CREATE", "DELETE"] * (len(tasks) // 2) + ["CREATE"] * (len(tasks) % 2)
    assert tasks.count("CREATE") == statuses.count(201) >= 1
    assert tasks.count("DELETE") == statuses.count(204)
    present = query(url, "SELECT id FROM midonet_agent_memberships WHERE id = :h", h=host)
    assert bool(present) == (tasks[-1] == "CREATE")
    assert all(s in (201, 409, 204, 404) for s in statuses), sorted(set(statuses))
