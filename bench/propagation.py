"""How fast a membership reaches the NSDB, and how fast the importer drains a backlog.

Prints one JSON document:
- POST -> member visible to an independent NSDB watcher (not the importer), p50/p99 over N
  sequential POSTs, for SQLite+SQLite (the all-in-one) and PostgreSQL+ZooKeeper (the
  production layout: gunicorn API + importer process, woken by LISTEN/NOTIFY);
- contended (PostgreSQL+ZooKeeper, same layout): 8 concurrent writers, 5% of operations a
  transaction that takes a task id and rolls back, and one transaction holding its task id
  uncommitted for 30 s; against an idle run of the same 8 writers measured just before it;
- catch-up: tasks/s applied from a backlog of 20,000 tasks into ZooKeeper.

    .venv/bin/python bench/propagation.py [--posts 1000] [--backlog 20000]
        [--contended-posts 2000] [--hold 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api import Server, with_postgresql  # noqa: E402
from midonet_membership import nsdb  # noqa: E402
from midonet_membership.cluster.importer import Importer  # noqa: E402
from midonet_membership.context import RequestContext  # noqa: E402
from midonet_membership.db import engine as db_engine  # noqa: E402
from midonet_membership.db import migration  # noqa: E402
from midonet_membership.db.memberships import AgentMemberships  # noqa: E402
from tests.fixtures.zookeeper import ZooKeeperNode, _free_port  # noqa: E402

ANCHOR = {"original_poll_ms": 1000, "original_mean_ms_at_least": 500,
          "original_worst_ms_at_least": 1000}
TARGETS = {"p99_ms": 50, "catch_up_tasks_per_s": 2000}


def ip_of(n: int) -> str:
    return f"{11 + n // 65536 % 200}.{n // 256 % 256}.{n % 256}.9"


class Observer:
    """An NSDB watcher of its own: records when each member first appears."""

    def __init__(self, url: str) -> None:
        self.store = nsdb.connect(url)
        self.seen: dict[str, float] = {}
        self.changed = threading.Condition()
        self.watch = self.store.watch_tunnel_zone(self._on_change)

    def _on_change(self, zone, members) -> None:
        now = time.perf_counter()
        with self.changed:
            for host in members:
                self.seen.setdefault(host, now)
            self.changed.notify_all()

    def wait_for(self, host: str, timeout: float = 10) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: host in self.seen, timeout):
                raise TimeoutError(host)
            return self.seen[host]

    def close(self) -> None:
        self.watch.cancel()
        self.store.close()


def post_to_visible(server: Server, observer: Observer, posts: int) -> dict:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"X-Auth-Token": server.token, "Content-Type": "application/json"}
    latencies = []
    for i in range(posts):
        host = str(uuid.uuid4())
        payload = json.dumps({"agent_membership": {"id": host, "ip_address": ip_of(i)}})
        start = time.perf_counter()
        conn.request("POST", "/v2.0/agent-memberships", payload, headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201, resp.status
        latencies.append(observer.wait_for(host) - start)
    latencies.sort()
    return {"posts": posts, "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(posts * 0.99) - 1] * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2),
            "mean_ms": round(statistics.mean(latencies) * 1000, 2)}


def sqlite_case(posts: int) -> dict:
    state = Path(tempfile.mkdtemp(prefix="mm-prop-"))
    server = Server(f"sqlite:///{state / 'neutron.sqlite'}", "all-in-one").start()
    observer = Observer(f"sqlite:///{server.state / 'nsdb.sqlite'}")
    try:
        return post_to_visible(server, observer, posts)
    finally:
        observer.close()
        server.stop()


def zookeeper_case(zk_url: str, posts: int) -> dict:
    def run(database_url: str) -> dict:
        server = Server(database_url, "api-1x8+importer", nsdb_url=zk_url).start()
        observer = Observer(zk_url)
        try:
            return post_to_visible(server, observer, posts)
        finally:
            observer.close()
            server.stop()
    return with_postgresql(run)


def _writers(server: Server, observer: Observer, posts: int, first_ip: int,
             rollback_share: float, engine=None) -> dict:
    """8 threads POSTing ``posts`` memberships in all; before a POST a thread rolls back a
    task-writing transaction of its own with probability ``rollback_share``."""
    import http.client
    import random

    import sqlalchemy as sa

    from midonet_membership.db import journal
    from midonet_membership.db.models import memberships

    latencies: list[float] = []
    rolled_back = [0]
    lock = threading.Lock()

    def writer(index: int) -> None:
        rng = random.Random(index)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {"X-Auth-Token": server.token, "Content-Type": "application/json"}
        for n in range(index, posts, 8):
            if engine is not None and rng.random() < rollback_share:
                with engine.connect() as db, db.begin() as tx:
                    db.execute(sa.insert(memberships).values(id=str(uuid.uuid4()),
                                                             ip_address=ip_of(900000 + n)))
                    journal.record(db, journal.CREATE, journal.AGENTMEMBERSHIP, "x", {},
                                   tenant_id=None, transaction_id=f"req-{uuid.uuid4()}")
                    tx.rollback()
                with lock:
                    rolled_back[0] += 1
            host = str(uuid.uuid4())
            payload = json.dumps({"agent_membership": {"id": host,
                                                       "ip_address": ip_of(first_ip + n)}})
            start = time.perf_counter()
            conn.request("POST", "/v2.0/agent-memberships", payload, headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 201, resp.status
            visible = observer.wait_for(host, timeout=60)
            with lock:
                latencies.append(max(0.0, visible - start))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {"posts": len(latencies), "rolled_back_transactions": rolled_back[0],
            "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2)}


def contended_case(zk_url: str, posts: int, hold: float) -> dict:
    def run(database_url: str) -> dict:
        import sqlalchemy as sa

        from midonet_membership.db import journal
        from midonet_membership.db.models import memberships

        server = Server(database_url, "api-1x8+importer", nsdb_url=zk_url).start()
        observer = Observer(zk_url)
        engine = db_engine.create_engine(database_url)
        try:
            idle = _writers(server, observer, posts, 0, 0.0)
            held_host = str(uuid.uuid4())
            held = engine.connect()
            held.begin()
            held.execute(sa.insert(memberships).values(id=held_host, ip_address=ip_of(800000)))
            journal.record(held, journal.CREATE, journal.AGENTMEMBERSHIP, held_host,
                           {"id": held_host, "ip_address": ip_of(800000)}, tenant_id=None,
                           transaction_id="req-held")
            since = time.perf_counter()
            contended = _writers(server, observer, posts, 100000, 0.05, engine)
            contended["ran_while_held_s"] = round(time.perf_counter() - since, 1)
            time.sleep(max(0.0, hold - (time.perf_counter() - since)))
            seen_before_commit = held_host in observer.seen
            committed = time.perf_counter()
            held.commit()
            held.close()
            contended["held_transaction"] = {
                "held_s": round(committed - since, 1),
                "visible_before_commit": seen_before_commit,
                "commit_to_visible_ms": round(
                    (observer.wait_for(held_host, 30) - committed) * 1000, 2)}
            return {"writers": 8, "idle": idle,
                    "rolled_back_5pct_and_one_held": contended}
        finally:
            engine.dispose()
            observer.close()
            server.stop()
    return with_postgresql(run)


def catch_up(zk_url: str, backlog: int) -> dict:
    def run(database_url: str) -> dict:
        migration.upgrade(database_url)
        engine = db_engine.create_engine(database_url)
        api = AgentMemberships(engine)
        for start in range(0, backlog, 100):  # 100 memberships per API transaction
            api.create(RequestContext.admin(), [
                {"id": str(uuid.uuid4()), "ip_address": ip_of(n)}
                for n in range(start, min(backlog, start + 100))])
        with nsdb.connect(zk_url, role="cluster") as store:
            importer = Importer(engine, store)
            began = time.perf_counter()
            applied = importer.catch_up()
            elapsed = time.perf_counter() - began
            members = len(store.list_members())
        engine.dispose()
        return {"backlog_tasks": backlog, "applied": applied, "members": members,
                "seconds": round(elapsed, 2), "tasks_per_s": round(applied / elapsed),
                "batch_size": importer.batch_size}
    return with_postgresql(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--contended-posts", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=30.0,
                        help="seconds the contended run holds one transaction open")
    parser.add_argument("--only", choices=["contended"], help="run only this case")
    args = parser.parse_args()
    zk = ZooKeeperNode(Path(tempfile.mkdtemp(prefix="mm-prop-zk-")), _free_port()).start()
    zk.wait_ready()
    base = f"zookeeper://127.0.0.1:{zk.client_port}"
    if args.only == "contended":
        try:
            out = {"machine": {"cores": os.cpu_count()}, "targets": TARGETS,
                   "settings": {"contended_posts": args.contended_posts, "hold_s": args.hold},
                   "contended_postgresql+zookeeper": contended_case(
                       f"{base}/contended-{uuid.uuid4().hex[:8]}", args.contended_posts,
                       args.hold)}
        finally:
            zk.kill()
        print(json.dumps(out, indent=2))
        return
    try:
        out = {"machine": {"cores": os.cpu_count()}, "anchor": ANCHOR, "targets": TARGETS,
               "settings": {"posts": args.posts, "backlog": args.backlog,
                            "contended_posts": args.contended_posts, "hold_s": args.hold},
               "post_to_visible": {
                   "sqlite+sqlite (all-in-one)": sqlite_case(args.posts),
                   "postgresql+zookeeper (api+importer)": zookeeper_case(
                       f"{base}/prop-{uuid.uuid4().hex[:8]}", args.posts)},
               "contended_postgresql+zookeeper": contended_case(
                   f"{base}/contended-{uuid.uuid4().hex[:8]}", args.contended_posts,
                   args.hold),
               "catch_up_zookeeper": catch_up(f"{base}/catchup-{uuid.uuid4().hex[:8]}",
                                              args.backlog)}
    finally:
        zk.kill()
    out["targets_met"] = {
        **{f"p99_le_50ms ({k})": v["p99_ms"] <= 50 for k, v in out["post_to_visible"].items()},
        "p99_le_50ms (contended)": out["contended_postgresql+zookeeper"][
            "rolled_back_5pct_and_one_held"]["p99_ms"] <= 50,
        "catch_up_ge_2000_tasks_s": out["catch_up_zookeeper"]["tasks_per_s"] >= 2000}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
