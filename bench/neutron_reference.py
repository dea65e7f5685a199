"""The stock-Neutron reference, measured in the same run instead of quoted.

Three targets, one MariaDB database, one load generator, one auth mode:

- ``neutron29_address_scopes``: stock neutron 29 serving its own ``address-scopes`` (a small
  admin-created resource of core Neutron: what Neutron itself costs per request);
- ``neutron29_agent_memberships``: the same neutron-server serving our plugin's
  ``agent-memberships`` (tests/fixtures/neutron.py's layout, ``.venv-neutron``);
- ``ours_agent_memberships``: ``midonet-membership api`` on the same database, through
  ``--ours-driver`` (mysqlclient's ``mysql+mysqldb`` when it is installed, as the README
  advises for MariaDB; neutron's is PyMySQL's ``mysql+pymysql``, as its guides configure
  it), and then, when that is not PyMySQL, ``ours_agent_memberships_pymysql``: ours
  through neutron's driver.

Both servers are gunicorn, 1 worker x 8 threads, ``auth_strategy = noauth`` (no Keystone in
the measured path; Neutron's noauth makes every caller an admin, ours is given
``X-Roles: admin``), on MariaDB because Neutron's migrations do not run on PostgreSQL. Each
operation runs ``--seconds`` over one keep-alive connection per client, at each of
``--concurrency`` in turn (1 by default, like the issue's reference; bench/api.py asks for
1 and 8), after ``--seed`` items were created through the API: POST, GET of one item,
``GET ?limit=100`` and DELETE of what the POSTs created. Each concurrency runs ``--rounds``
rounds (3), in each every target in turn, the order rotated from round to round; a figure
is the round of median req/s (every round's is listed): one run of each once moved ours
by half depending on which came first after neutron's writes. The machine is shared:
``machine_busy_share`` is the share of all CPU time that was busy during the run (these
servers and MariaDB included); near 1.0 every figure is lower than on a quiet machine, but
the targets are measured under the same load, one after the other.

    .venv/bin/python bench/neutron_reference.py [--seconds 5] [--seed 200] [--concurrency 1,8]
                                                [--rounds 3]
                                                [--ours-driver mysql+mysqldb]

Prints one JSON document on stdout; progress on stderr. Needs ``tools/ensure-openstack``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api import with_mariadb  # noqa: E402  (bench/api.py: a fresh database, dropped after)

# The servers as the tests start them: neutron-server with our plugin, and our `api`.
from tests.fixtures.neutron import VENV as NEUTRON_VENV  # noqa: E402
from tests.fixtures.neutron import NeutronServer  # noqa: E402
from tests.fixtures.servers import ProductionApi  # noqa: E402

PYMYSQL = "mysql+pymysql"  # neutron's MariaDB driver
MYSQLCLIENT = "mysql+mysqldb"
SETTINGS = {"server": "gunicorn, 1 worker x 8 threads", "auth_strategy": "noauth",
            "database": "MariaDB on 127.0.0.1, one database shared by all targets",
            "neutron_driver": PYMYSQL}


def default_ours_driver() -> str:
    """mysqlclient's when it is installed (the README's advice for MariaDB), else PyMySQL's."""
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        return PYMYSQL
    return MYSQLCLIENT


OURS_CONF = "[DEFAULT]\nauth_strategy = noauth\napi_threads = 8\n"


def log(message: str) -> None:
    print(f"[neutron-reference] {message}", file=sys.stderr, flush=True)


class Resource:
    """What a target's four operations send."""

    def __init__(self, collection: str, member_key: str, body) -> None:
        self.collection, self.member_key, self.body = collection, member_key, body


MEMBERSHIPS = Resource("/v2.0/agent-memberships", "agent_membership",
                       lambda n: {"agent_membership": {
                           "id": str(uuid.uuid4()),
                           "ip_address": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}})
ADDRESS_SCOPES = Resource("/v2.0/address-scopes", "address_scope",
                          lambda n: {"address_scope": {"name": f"scope-{n}",
                                                       "ip_version": 4, "shared": False}})
HEADERS = {"Content-Type": "application/json", "Accept": "application/json",
           "X-Roles": "admin", "X-User-Id": "bench"}


def _send(conn: http.client.HTTPConnection, method: str, path: str,
          body: dict | None) -> tuple[int, bytes]:
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers=HEADERS)
    resp = conn.getresponse()
    return resp.status, resp.read()


class Counter:
    """Serial numbers for created items, unique across the whole run."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def next(self) -> int:
        with self.lock:
            self.n += 1
            return self.n


def run_operation(port: int, resource: Resource, op: str, ids: list[str], seconds: float,
                  concurrency: int, serial: Counter) -> dict:
    """``op`` for ``seconds`` on ``concurrency`` keep-alive connections."""
    latencies: list[float] = []
    errors = [0]
    created: list[str] = []
    to_delete = list(ids)
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < stop_at:
            if op == "create":
                request = ("POST", resource.collection, resource.body(serial.next()))
            elif op == "show":
                request = ("GET", f"{resource.collection}/{ids[len(latencies) % len(ids)]}",
                           None)
            elif op == "list_limit_100":
                request = ("GET", f"{resource.collection}?limit=100", None)
            else:
                with lock:
                    if not to_delete:
                        break
                    target = to_delete.pop()
                request = ("DELETE", f"{resource.collection}/{target}", None)
            start = time.perf_counter()
            status, raw = _send(conn, *request)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if not 200 <= status < 300:
                    errors[0] += 1
                elif op == "create":
                    created.append(json.loads(raw)[resource.member_key]["id"])
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ids.extend(created)
    ordered = sorted(latencies)
    return {"req_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0,
            "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else None,
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2) if ordered else None,
            "requests": len(latencies), "errors": errors[0]}


def seed_target(port: int, resource: Resource, n: int, serial: Counter) -> list[str]:
    """Create ``n`` items through the API; their ids (kept for the shows and lists)."""
    seeded: list[str] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        status, raw = _send(conn, "POST", resource.collection, resource.body(serial.next()))
        if status != 201:
            raise RuntimeError(f"seeding {resource.collection}: {status} {raw[:300]!r}")
        seeded.append(json.loads(raw)[resource.member_key]["id"])
    conn.close()
    return seeded


OPERATIONS = ("create", "show", "list_limit_100", "delete")


def bench_targets(targets: list[tuple[str, int, Resource]], args: argparse.Namespace,
                  serial: Counter) -> dict[str, dict]:
    """Seed ``--seed`` items per target, then at each concurrency, ``--rounds`` times:
    every target in turn (the order rotates each round, so no target always follows
    another's writes) runs create, show and list for ``--seconds`` each, then deletes what
    its creates made (the seeded items stay for the shows and lists). Per target and
    operation the round of median req/s is kept, every round's listed."""
    seeded = {key: seed_target(port, resource, args.seed, serial)
              for key, port, resource in targets}
    runs: dict[str, dict[str, dict[str, list[dict]]]] = {
        key: {f"c{c}": {op: [] for op in OPERATIONS} for c in args.concurrency}
        for key, _, _ in targets}
    for concurrency in args.concurrency:
        for r in range(args.rounds):
            shift = r % len(targets)
            for key, port, resource in targets[shift:] + targets[:shift]:
                created: list[str] = []
                for op in OPERATIONS:
                    ids = created if op in ("create", "delete") else seeded[key]
                    runs[key][f"c{concurrency}"][op].append(run_operation(
                        port, resource, op, ids, args.seconds, concurrency, serial))
    return {key: {c: {op: _median_round(rounds) for op, rounds in by_op.items()}
                  for c, by_op in by_c.items()} for key, by_c in runs.items()}


def _median_round(rounds: list[dict]) -> dict:
    """The round of median req/s (its latencies with it), every round's req/s, and the
    errors of all rounds."""
    ordered = sorted(rounds, key=lambda figure: figure["req_per_s"])
    return {**ordered[(len(ordered) - 1) // 2],
            "rounds_req_per_s": [figure["req_per_s"] for figure in rounds],
            "errors": sum(figure["errors"] for figure in rounds)}


def _busy_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def measure(args: argparse.Namespace) -> dict:
    """The three targets on one fresh MariaDB database (dropped at the end)."""
    return with_mariadb(lambda url: _measure_on(sa.make_url(url), args), PYMYSQL)


def _measure_on(url: sa.URL, args: argparse.Namespace) -> dict:
    ours_drivers = dict.fromkeys([args.ours_driver, PYMYSQL])  # the chosen one first
    state = Path(tempfile.mkdtemp(prefix="mm-bench-neutron-"))
    servers: list[NeutronServer | ProductionApi] = []
    serial = Counter()
    busy0, total0 = _busy_ticks()
    try:
        log(f"neutron-db-manage upgrade heads + neutron-server on {url.database}")
        neutron = NeutronServer(state / "neutron", url.render_as_string(hide_password=False))
        servers.append(neutron)
        neutron.upgrade().start()
        targets = [("neutron29_address_scopes", neutron.port, ADDRESS_SCOPES),
                   ("neutron29_agent_memberships", neutron.port, MEMBERSHIPS)]
        for i, driver in enumerate(ours_drivers):
            log(f"midonet-membership api on the same database, through {driver}")
            (state / driver).mkdir()
            ours = ProductionApi(state / driver, url.set(drivername=driver).render_as_string(
                hide_password=False), conf=OURS_CONF)
            servers.append(ours)
            key = "ours_agent_memberships" + ("_pymysql" if i else "")
            targets.append((key, ours.port, MEMBERSHIPS))
        log(f"{', '.join(key for key, _, _ in targets)}: {args.rounds} rounds")
        result = bench_targets(targets, args, serial)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(state, ignore_errors=True)
    busy1, total1 = _busy_ticks()
    return {"settings": {**SETTINGS, "ours_driver": args.ours_driver,
                         "concurrency": args.concurrency, "rounds": args.rounds,
                         "order": "the targets in turn, rotated each round",
                         "seconds_per_operation": args.seconds, "seeded_items": args.seed,
                         "cpus": os.cpu_count()},
            "machine_busy_share": round((busy1 - busy0) / max(1, total1 - total0), 2),
            **result}


def _concurrencies(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("client counts are whole numbers >= 1")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds per concurrency; each figure is the round of median req/s")
    p.add_argument("--concurrency", type=_concurrencies, default=[1],
                   help="comma-separated client counts, each measured in turn (default 1)")
    p.add_argument("--ours-driver", choices=[MYSQLCLIENT, PYMYSQL], default=default_ours_driver(),
                   help="our server's MariaDB driver (default: mysqlclient's when installed)")
    return p


def main() -> int:
    args = parser().parse_args()
    if not (NEUTRON_VENV / "bin" / "gunicorn").exists():
        log(f"no neutron venv at {NEUTRON_VENV}: run tools/ensure-openstack")
        return 2
    out = measure(args)
    print(json.dumps(out, indent=2))
    return 1 if errors_in(out) else 0


def errors_in(reference: dict) -> int:
    """Failed requests over every target, concurrency and operation."""
    return sum(figure["errors"] for key, target in reference.items()
               if "_memberships" in key or key.endswith("_scopes")
               for by_op in target.values() for figure in by_op.values())


if __name__ == "__main__":
    sys.exit(main())
