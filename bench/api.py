"""API throughput and latency, with the server started the way the README starts it.

On SQLite the real ``midonet-membership all-in-one`` (``make run``'s server) runs as a
subprocess (a generated neutron.conf with ``[database] connection``, a temporary state dir, a
free port, token auth with ``<state>/admin-token``); on PostgreSQL the production layout of
the reference measurement (``midonet-membership api --workers 1 --threads 8``, gunicorn, with
``midonet-membership importer`` beside it); ``--layouts all-in-one`` measures the all-in-one
on PostgreSQL too. PostgreSQL runs on a fresh ``mm_bench_<random>`` database, dropped at the
end.

Beside ours, in the same run and in alternating rounds (ours, database floor, HTTP floor),
the floors of bench/floors.py: the HTTP floor (a trivial WSGI app answering bodies of ours'
sizes, served by the same server functions with the same settings) and each operation's
database floor (its minimal SQL through the same driver, no HTTP). An operation's floor adds
the two's times per request; ``vs_floor`` gives ours as a fraction of it and
``verdict_vs_floor`` checks the issue's targets (>= 0.7 in the production layout, >= 0.6 in
the all-in-one). A fourth kind in each round, *HTTP + SQL* (the trivial app running the
database floor's SQL before it answers, in the same server), shows how much of the floor a
Python app reaches that does nothing but our SQL. The table of them goes to stderr at the
end (``make bench``).

The memberships table is first seeded with ``--rows`` rows (bulk INSERT straight into the
database, then ANALYZE as autovacuum would), then, at concurrency 1 and 8 (keep-alive
``http.client`` connections, one per client thread): POST, GET show and DELETE of fresh
memberships, and ``GET ?limit=100`` on the first page and on the page after the row at 90%
of the table in id order (the deep page, verified against the seeded ids). Each figure is
measured in three runs: req/s of the median run (every run's is listed), p50/p99 latency in
ms over all runs' requests, errors (any non-2xx or broken connection; must be 0), and the CPU
the server (``of_which_importer``: the production layout's importer process), this client and
PostgreSQL used per request. The client, the server and
PostgreSQL share the machine's cores; ``other_load`` is the share of the machine other users'
processes took meanwhile (a figure measured while it is high is too low).

Then neutron 29, in the same run (bench/neutron_reference.py, unless ``--no-reference``):
neutron-server serving our plugin's agent-memberships, stock neutron's address-scopes and
our ``api`` server, all on one MariaDB database (neutron's migrations do not run on
PostgreSQL) at concurrency 1 and 8; ``verdict_vs_neutron29`` checks ours against the first
(>= 8x for create, show and delete, >= 100x for a page of 100).

Prints ONE JSON document on stdout: every setting, every figure and a pass/fail per target.
Progress and the tables go to stderr; the exit status is 1 if any request failed.

    .venv/bin/python bench/api.py [--backends sqlite,postgresql] [--rows 100000] [--quick]
                                  [--layouts all-in-one,api-1x8+importer] [--wait-quiet S]
                                  [--no-reference]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from floors import DatabaseFloor, floor_serving

BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/mysql"
BASE = "/v2.0/agent-memberships"
CONCURRENCY = (1, 8)
OPERATIONS = ("create", "show", "delete", "list_first_page", "list_deep_page")

# Ours against neutron 29 serving the same resource (bench/neutron_reference.py: our plugin
# inside neutron-server), both on one MariaDB database in this run, at each concurrency:
# the least ratio of req/s per operation (issue 12).
NEUTRON_TARGETS = {"create": 8, "show": 8, "delete": 8, "list_limit_100": 100}
# The deep page's p50 against the first page's, in every layout.
DEEP_PAGE_MAX_RATIO = 1.5

# The layouts measured: the README's Quickstart command, and on PostgreSQL also the README's
# production layout shaped like the reference (one gunicorn worker with 8 threads).
LAYOUTS = {
    "all-in-one": [["all-in-one"]],
    "api-1x8+importer": [["api", "--workers", "1", "--threads", "8"], ["importer"]],
}
LAYOUTS_OF = {"sqlite": ["all-in-one"], "postgresql": ["all-in-one", "api-1x8+importer"]}
# Measured unless --layouts says otherwise: `make run`'s server and the production layout.
DEFAULT_LAYOUTS_OF = {"sqlite": ["all-in-one"], "postgresql": ["api-1x8+importer"]}

# Ours as a fraction of each operation's floor (issue 12), at every concurrency.
FLOOR_TARGETS = {"api-1x8+importer": 0.7, "all-in-one": 0.6}
FLOOR_TARGET_OPERATIONS = ("create", "show", "delete", "list_first_page")


def log(message: str) -> None:
    print(f"[bench/api] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seeded_ip(n: int) -> str:
    """Seeded row n's address, unique in 10.0.0.0/8 (table data only, never contacted)."""
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def posted_ip(n: int) -> str:
    """POSTed membership n's address, unique in 172.16.0.0/12 (never contacted)."""
    return f"172.{16 + (n >> 16 & 15)}.{n >> 8 & 255}.{n & 255}"


# -- the server --------------------------------------------------------------------------------

class Server:
    """The layout's processes, each the ``midonet-membership`` console script of this venv."""

    def __init__(self, database_url: str, layout: str, nsdb_url: str | None = None,
                 commands: list[list[str]] | None = None) -> None:
        """``commands``: the layout's processes (default: ``LAYOUTS[layout]``)."""
        self.layout = layout
        self.state = Path(tempfile.mkdtemp(prefix="mm-bench-state-"))
        self.port = free_port()
        self.config_file = self.state / "neutron.conf"
        self.config_file.write_text(f"[database]\nconnection = {database_url}\n" + (
            f"[nsdb]\nconnection = {nsdb_url}\n" if nsdb_url else ""))
        self.log_path = self.state / "server.log"
        self.commands = []
        for command in commands or LAYOUTS[layout]:
            bind = [] if command[0] == "importer" else ["--bind", f"127.0.0.1:{self.port}"]
            self.commands.append([str(BIN / "midonet-membership"), *command, "--config-file",
                                  str(self.config_file), "--state-dir", str(self.state), *bind])
        self.procs: list[subprocess.Popen] = []
        self.token = ""

    needs_token = True
    env: dict[str, str] = {}  # added to the processes' environment

    def start(self, timeout: float = 60) -> Server:
        self.log = open(self.log_path, "ab")
        for command in self.commands:
            self.procs.append(subprocess.Popen(
                command, stdout=self.log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env}))
        deadline = time.monotonic() + timeout
        token_file = self.state / "admin-token"
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n"
                                       + self.output())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
                continue
            if not self.needs_token:
                return self
            if token_file.exists() and token_file.read_text().strip():
                self.token = token_file.read_text().strip()
                return self
            time.sleep(0.05)
        raise RuntimeError("server did not start:\n" + self.output())

    def pids(self) -> list[int]:
        """The layout's processes and their children (gunicorn's worker)."""
        roots = {p.pid for p in self.procs if p.poll() is None}
        found = set(roots)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(_proc_stat(int(entry))[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid in roots:
                    found.add(int(entry))
        return sorted(found)

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def importer_cpu_seconds(self) -> float:
        """The layout's own importer process (none in the all-in-one or a floor): 0."""
        return sum(_cpu_seconds(proc.pid)
                   for proc, command in zip(self.procs, self.commands, strict=True)
                   if command[1] == "importer" and proc.poll() is None)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if hasattr(self, "log"):
            self.log.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


class FloorServer(Server):
    """The HTTP floor: bench/floors.py's trivial app, served as ``layout`` serves ours."""

    needs_token = False

    def __init__(self, layout: str, responses: dict[str, tuple[int, int]], backend: str,
                 database_url: str | None = None) -> None:
        self.layout = layout
        self.state = Path(tempfile.mkdtemp(prefix="mm-bench-floor-"))
        self.port = free_port()
        self.log_path = self.state / "floor.log"
        self.commands = [[sys.executable, str(Path(__file__).with_name("floors.py")),
                          "--layout", layout, "--port", str(self.port),
                          "--responses", json.dumps(responses), "--backend", backend]
                         + (["--database", database_url] if database_url else [])]
        self.procs = []
        self.token = ""


def _cpu_seconds(pid: int) -> float:
    """The CPU ``pid`` used, with that of the children it has reaped (``cutime``,
    ``cstime``): a child that exits during a run keeps its time in the sum. PostgreSQL's
    postmaster reaps a backend when its connection closes (the database floor opens its
    own for each run); without those fields its CPU left the sum, and the database floor's
    PostgreSQL CPU a request came out negative."""
    try:
        fields = _proc_stat(pid)
    except OSError:
        return 0.0
    return sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


# -- the client --------------------------------------------------------------------------------

Request = tuple[str, str, bytes | None]


class CpuMeter:
    """CPU seconds used by the server, this client, PostgreSQL and the machine as a whole."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def read(self) -> dict[str, float]:
        tck = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        times = os.times()
        return {"server": self.server.cpu_seconds(),
                "importer": self.server.importer_cpu_seconds(),
                "client": times.user + times.system,
                "postgres": _postgres_cpu_seconds(),
                "machine_busy": (sum(values) - idle) / tck, "machine_total": sum(values) / tck}


def _postgres_cpu_seconds() -> float:
    """All PostgreSQL processes (ours and anyone else's on this server), the backends that
    have exited included (:func:`_cpu_seconds`)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
        except OSError:
            continue
        total += _cpu_seconds(int(entry))
    return total


class Run:
    """One measurement: latencies, statuses, elapsed time and the CPU used meanwhile."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.elapsed = 0.0
        self.cpu: dict[str, float] = {}

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


QUIET = {"max_wait": 0.0, "waited": 0.0}


def wait_until_quiet() -> None:
    """With ``--wait-quiet S``: wait (at most S seconds) for the machine to be under 10%
    busy over half a second, so other users' bursts do not land in a run."""
    deadline = time.monotonic() + QUIET["max_wait"]
    started = time.monotonic()
    while time.monotonic() < deadline and _machine_busy_share(0.5) > 0.10:
        pass
    QUIET["waited"] += time.monotonic() - started


def measure(server: Server, concurrency: int, requests: list[Request], seconds: float,
            warmup: int = 20) -> tuple[Run, list[int]]:
    """Send ``requests`` over ``concurrency`` keep-alive connections (at most ``seconds``).

    Each client thread first warms its connection (and the server's DB pool) with untimed
    ``GET ?limit=1`` requests; then all start together. Returns the run and the indices of
    the requests answered 2xx.
    """
    headers = {"X-Auth-Token": server.token, "Content-Type": "application/json",
               "Accept": "application/json"}
    chunks = [list(range(i, len(requests), concurrency)) for i in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    succeeded: list[list[int]] = [[] for _ in range(concurrency)]
    statuses: list[Counter] = [Counter() for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    stop_at = [math.inf]

    def send(conn: http.client.HTTPConnection, method: str, path: str,
             body: bytes | None) -> tuple[http.client.HTTPConnection, int]:
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return conn, resp.status
        except (OSError, http.client.HTTPException):
            conn.close()  # reconnect for the next request; this one is an error (status 0)
            return http.client.HTTPConnection("127.0.0.1", server.port, timeout=60), 0

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for _ in range(warmup):
            conn, _status = send(conn, "GET", f"{BASE}?limit=1", None)
        barrier.wait()
        mine, ok, status_count = latencies[w], succeeded[w], statuses[w]
        for i in chunks[w]:
            start = time.perf_counter()
            if start > stop_at[0]:
                break
            conn, status = send(conn, *requests[i])
            mine.append(time.perf_counter() - start)
            status_count[status] += 1
            if 200 <= status < 300:
                ok.append(i)
        conn.close()

    wait_until_quiet()
    meter = CpuMeter(server)
    threads = [threading.Thread(target=worker, args=(w,), daemon=True)
               for w in range(concurrency)]
    for t in threads:
        t.start()
    before = meter.read()
    barrier.wait()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    for t in threads:
        t.join()
    run = Run()
    run.elapsed = time.perf_counter() - started
    after = meter.read()
    run.cpu = {k: after[k] - before[k] for k in after}
    run.latencies = [x for part in latencies for x in part]
    run.statuses = sum(statuses, Counter())
    return run, sorted(i for part in succeeded for i in part)


class NoServer:
    """The database floor has no server process: only the client and PostgreSQL count."""

    @staticmethod
    def cpu_seconds() -> float:
        return 0.0

    importer_cpu_seconds = cpu_seconds


def measure_db(floor: DatabaseFloor, op: str, concurrency: int, items: list[Any],
               seconds: float, warmup: int = 20) -> tuple[Run, list[int]]:
    """``op``'s minimal SQL for each of ``items`` over ``concurrency`` connections of the
    same driver, no HTTP (bench/floors.py); timed like :func:`measure`."""
    run_op = floor.operation(op)
    warm = floor.operation("show")
    chunks = [list(range(i, len(items), concurrency)) for i in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    succeeded: list[list[int]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    barrier = threading.Barrier(concurrency + 1)
    stop_at = [math.inf]

    def worker(w: int) -> None:
        conn = floor.connect()
        try:
            for _ in range(warmup):
                warm(conn, (str(uuid.uuid4()), ""))
            barrier.wait()
            mine = latencies[w]
            for i in chunks[w]:
                start = time.perf_counter()
                if start > stop_at[0]:
                    break
                try:
                    run_op(conn, items[i])
                except Exception as exc:  # counted as an error, like a non-2xx answer
                    log(f"database floor {op}: {exc}")
                    errors[w] += 1
                    continue
                finally:
                    mine.append(time.perf_counter() - start)
                succeeded[w].append(i)
        finally:
            conn.close()

    wait_until_quiet()
    meter = CpuMeter(NoServer())
    threads = [threading.Thread(target=worker, args=(w,), daemon=True)
               for w in range(concurrency)]
    for t in threads:
        t.start()
    before = meter.read()
    barrier.wait()
    started = time.perf_counter()
    stop_at[0] = started + seconds
    for t in threads:
        t.join()
    run = Run()
    run.elapsed = time.perf_counter() - started
    after = meter.read()
    run.cpu = {k: after[k] - before[k] for k in after}
    run.latencies = [x for part in latencies for x in part]
    ok = sorted(i for part in succeeded for i in part)
    run.statuses = Counter({200: len(ok), 0: sum(errors)} if sum(errors) else {200: len(ok)})
    return run, ok


def summarize(runs: list[Run]) -> dict:
    """req/s of the median run (and every run's), latency percentiles over all runs pooled,
    errors over all runs, CPU per request of each party and the share of the machine used
    by anything else (other users' processes: a measurement made while it is high is low)."""
    latencies = sorted(x for r in runs for x in r.latencies)
    count = len(latencies)
    statuses = sum((r.statuses for r in runs), Counter())
    errors = {str(s): n for s, n in sorted(statuses.items()) if not 200 <= s < 300}
    rates = sorted(r.rate for r in runs)
    cpu = {k: sum(r.cpu[k] for r in runs) for k in runs[0].cpu}
    per_req = (lambda seconds: round(seconds * 1000 / count, 3)) if count else (lambda _: None)
    machine = max(cpu["machine_total"], 1e-9)
    other = cpu["machine_busy"] - cpu["server"] - cpu["client"] - cpu["postgres"]
    return {
        "requests": count,
        "errors": sum(errors.values()),
        **({"error_statuses": errors} if errors else {}),
        "req_per_s": round(statistics.median(rates), 1),
        "runs_req_per_s": [round(r.rate, 1) for r in runs],
        "p50_ms": _percentile_ms(latencies, 0.50),
        "p99_ms": _percentile_ms(latencies, 0.99),
        "cpu_ms_per_req": {"server": per_req(cpu["server"]),
                           "of_which_importer": per_req(cpu["importer"]),
                           "client": per_req(cpu["client"]), "postgres": per_req(cpu["postgres"])},
        "machine_busy": round(cpu["machine_busy"] / machine, 2),
        "other_load": round(max(0.0, other) / machine, 2),
    }


def _percentile_ms(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p * len(sorted_values)))
    return round(sorted_values[rank - 1] * 1000, 3)


def get_json(server: Server, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("GET", path, headers={"X-Auth-Token": server.token})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if body else None
    finally:
        conn.close()


# -- the database ------------------------------------------------------------------------------

def seed(database_url: str, rows: int) -> list[str]:
    """Bulk-insert ``rows`` memberships straight into the table, then ANALYZE.

    Returns their ids in id order (byte order; the PostgreSQL databases here use C.UTF-8,
    and fixed-position hyphens make any collation agree on UUID strings anyway).
    """
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    ids = sorted(str(uuid.uuid4()) for _ in range(rows))
    table = sa.table("midonet_agent_memberships", sa.column("id"), sa.column("ip_address"))
    with engine.begin() as conn:
        for start in range(0, rows, 10000):
            conn.execute(sa.insert(table), [{"id": ids[i], "ip_address": seeded_ip(i)}
                                            for i in range(start, min(rows, start + 10000))])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE TABLE midonet_agent_memberships"
                             if conn.dialect.name == "mysql" else
                             "ANALYZE midonet_agent_memberships")
    engine.dispose()
    return ids


def count_rows(database_url: str) -> int:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        n = conn.exec_driver_sql("SELECT count(*) FROM midonet_agent_memberships").scalar_one()
    engine.dispose()
    return n


def with_postgresql(run):
    """Run ``run(url)`` on a fresh PostgreSQL database, dropped afterwards."""
    return _with_fresh_database(PG_ADMIN, 'CREATE DATABASE "{}"',
                                'DROP DATABASE IF EXISTS "{}" WITH (FORCE)', run)


def with_mariadb(run, driver: str = "mysql+mysqldb"):
    """Run ``run(url)`` on a fresh MariaDB database through ``driver``, dropped afterwards."""
    return _with_fresh_database(MARIADB_ADMIN, "CREATE DATABASE `{}` CHARACTER SET utf8mb4",
                                "DROP DATABASE IF EXISTS `{}`", run, driver)


def _with_fresh_database(admin_url: str, create: str, drop: str, run,
                         driver: str | None = None):
    name = f"mm_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(create.format(name))
    try:
        url = sa.make_url(admin_url).set(database=name)
        return run(url.set(drivername=driver or url.drivername).render_as_string(False))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(drop.format(name))
        admin.dispose()


def with_sqlite(run):
    directory = Path(tempfile.mkdtemp(prefix="mm-bench-sqlite-"))
    try:
        return run(f"sqlite:///{directory / 'neutron.sqlite'}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- one layout on one database -----------------------------------------------------------------

class Fresh:
    """Unique POSTed memberships across the whole run (ids and addresses never repeat)."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> list[tuple[str, str]]:
        start, self.next = self.next, self.next + n
        return [(str(uuid.uuid4()), posted_ip(i)) for i in range(start, start + n)]


def bench_layout(database_url: str, layout: str, args: argparse.Namespace) -> dict:
    """Ours, its HTTP floor and its database floor, in alternating rounds of the same run."""
    server = Server(database_url, layout)
    log(f"{layout} on {sa.make_url(database_url).get_backend_name()}: starting")
    server.start()
    floor_server = sql_server = None
    result: dict[str, Any] = {"command": " ".join(
        ["midonet-membership", *LAYOUTS[layout][0], "--config-file F --state-dir D --bind "
         f"127.0.0.1:{server.port}"] + ([" + midonet-membership importer"]
                                        if len(LAYOUTS[layout]) > 1 else []))}
    try:
        started = time.perf_counter()
        ids = seed(database_url, args.rows)
        result["seed_seconds"] = round(time.perf_counter() - started, 2)
        log(f"  seeded {args.rows} rows in {result['seed_seconds']} s")
        deep_index = min(args.rows - 1, int(args.rows * 0.9))
        deep_marker = ids[deep_index]
        result["deep_page"] = _check_pages(server, ids, deep_index)
        posted = Fresh()
        responses = _response_sizes(server, posted, deep_marker)
        backend = sa.make_url(database_url).get_backend_name()
        floor_server = FloorServer(layout, responses, backend).start()
        sql_server = FloorServer(layout, responses, backend, database_url).start()
        db_floor = DatabaseFloor(database_url)
        result["floors"] = {
            "http": {"app": "bench/floors.py trivial_app: reads the body, answers ours' "
                            "status with a canned body of ours' size",
                     "responses_status_bytes": responses, **floor_serving(layout, backend)},
            "database": db_floor.setting(),
            "floor": "1 / (1/http_floor_req_per_s + 1/db_floor_req_per_s): the two "
                     "floors' times per request added",
            "http_sql": "the HTTP floor's app running the database floor's SQL before it "
                        "answers (bench/floors.py --database): for comparison, not a floor"}
        for c in CONCURRENCY:
            kinds = ("ours", "db_floor", "http_floor", "http_sql")
            runs: dict[str, dict[str, list[Run]]] = {
                kind: {op: [] for op in OPERATIONS} for kind in kinds}
            ratios = []
            for _ in range(args.repeats):  # alternating: ours, the floors, HTTP + SQL
                ratios.append(_http_round(server, c, posted, deep_marker, args, runs["ours"]))
                _db_round(db_floor, c, posted, deep_marker, args, runs["db_floor"])
                _http_round(floor_server, c, posted, deep_marker, args, runs["http_floor"])
                _http_round(sql_server, c, posted, deep_marker, args, runs["http_sql"])
            figures = {op: summarize(op_runs) for op, op_runs in runs["ours"].items()}
            figures["list_deep_page"]["p50_ratio_to_first_page"] = round(
                statistics.median(ratios), 2)
            result[f"c{c}"] = figures
            http = {op: summarize(op_runs) for op, op_runs in runs["http_floor"].items()}
            db = {op: summarize(op_runs) for op, op_runs in runs["db_floor"].items()}
            sql = {op: summarize(op_runs) for op, op_runs in runs["http_sql"].items()}
            result.setdefault("floor_figures", {})[f"c{c}"] = {"http": http, "database": db,
                                                               "http_sql": sql}
            result.setdefault("vs_floor", {})[f"c{c}"] = vs_floor(figures, http, db, sql)
            log(f"  c={c}: " + ", ".join(
                f"{op} {f['req_per_s']}/s = {result['vs_floor'][f'c{c}'][op]['fraction']} "
                "of floor" + (f" ERRORS {f['errors']}" if f["errors"] else "")
                for op, f in figures.items()))
        result["rows_at_end"] = count_rows(database_url)
        if not server.alive():
            raise RuntimeError("the server died during the run:\n" + server.output())
    finally:
        for s in (server, floor_server, sql_server):
            if s is not None:
                s.stop()
                s.cleanup()
    return result


def _http_round(server: Server, c: int, posted: Fresh, deep_marker: str,
                args: argparse.Namespace, runs: dict[str, list[Run]]) -> float:
    """One round of the five operations over HTTP; returns the deep/first page p50 ratio."""
    memberships = posted.take(args.requests)
    creates = [("POST", BASE, json.dumps({"agent_membership": {
        "id": id_, "ip_address": ip}}).encode()) for id_, ip in memberships]
    run, ok = measure(server, c, creates, args.seconds)
    runs["create"].append(run)
    created = [memberships[i][0] for i in ok]
    run, _ = measure(server, c, [("GET", f"{BASE}/{id_}", None) for id_ in created],
                     args.seconds)
    runs["show"].append(run)
    # Every created membership goes: the table is back to --rows for the lists.
    run, _ = measure(server, c, [("DELETE", f"{BASE}/{id_}", None) for id_ in created],
                     math.inf)
    runs["delete"].append(run)
    # First and deep pages back to back, so both see the same machine load.
    first = [("GET", f"{BASE}?limit=100", None)] * args.list_requests
    deep = [("GET", f"{BASE}?limit=100&marker={deep_marker}", None)] * args.list_requests
    run_first, _ = measure(server, c, first, args.seconds)
    run_deep, _ = measure(server, c, deep, args.seconds)
    runs["list_first_page"].append(run_first)
    runs["list_deep_page"].append(run_deep)
    return statistics.median(run_deep.latencies) / statistics.median(run_first.latencies)


def _db_round(floor: DatabaseFloor, c: int, posted: Fresh, deep_marker: str,
              args: argparse.Namespace, runs: dict[str, list[Run]]) -> None:
    """The same round as the database floor: the operations' SQL, no HTTP."""
    memberships = posted.take(args.requests)
    run, ok = measure_db(floor, "create", c, memberships, args.seconds)
    runs["create"].append(run)
    created = [memberships[i] for i in ok]
    runs["show"].append(measure_db(floor, "show", c, created, args.seconds)[0])
    runs["delete"].append(measure_db(floor, "delete", c, created, math.inf)[0])
    for op, marker in (("list_first_page", None), ("list_deep_page", deep_marker)):
        runs[op].append(measure_db(floor, op, c, [marker] * args.list_requests,
                                   args.seconds)[0])


def _response_sizes(server: Server, posted: Fresh,
                    deep_marker: str) -> dict[str, tuple[int, int]]:
    """Ours' status and body size per operation: what the HTTP floor answers."""
    (id_, ip), = posted.take(1)
    body = json.dumps({"agent_membership": {"id": id_, "ip_address": ip}}).encode()
    sizes = {}
    for op, method, path, data in (
            ("create", "POST", BASE, body), ("show", "GET", f"{BASE}/{id_}", None),
            ("delete", "DELETE", f"{BASE}/{id_}", None),
            ("list_first_page", "GET", f"{BASE}?limit=100", None),
            ("list_deep_page", "GET", f"{BASE}?limit=100&marker={deep_marker}", None)):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers={
                "X-Auth-Token": server.token, "Content-Type": "application/json"})
            resp = conn.getresponse()
            sizes[op] = (resp.status, len(resp.read()))
        finally:
            conn.close()
        if not 200 <= sizes[op][0] < 300:
            raise RuntimeError(f"{op} answered {sizes[op][0]} while sizing the HTTP floor")
    return sizes


def vs_floor(ours: dict, http: dict, db: dict, sql: dict) -> dict:
    """Each operation's floor (the HTTP floor's and the database floor's times per request
    added) and ours as a fraction of it (median runs' req/s); beside it the HTTP + SQL app
    and what fraction of the floor that reaches."""
    out = {}
    for op in OPERATIONS:
        h, d, o = http[op]["req_per_s"], db[op]["req_per_s"], ours[op]["req_per_s"]
        floor = 1 / (1 / h + 1 / d) if h and d else 0.0
        out[op] = {"http_floor_req_per_s": h, "db_floor_req_per_s": d,
                   "floor_req_per_s": round(floor, 1), "ours_req_per_s": o,
                   "fraction": round(o / floor, 3) if floor else None,
                   "http_sql_req_per_s": sql[op]["req_per_s"],
                   "http_sql_fraction": round(sql[op]["req_per_s"] / floor, 3) if floor
                   else None,
                   "http_floor_p50_ms": http[op]["p50_ms"], "db_floor_p50_ms": db[op]["p50_ms"],
                   "http_sql_p50_ms": sql[op]["p50_ms"], "ours_p50_ms": ours[op]["p50_ms"],
                   "floor_errors": http[op]["errors"] + db[op]["errors"] + sql[op]["errors"]}
    return out


def _check_pages(server: Server, ids: list[str], deep_index: int) -> dict:
    """The first and deep pages are what the bench claims they are (100 rows each)."""
    status, body = get_json(server, f"{BASE}?limit=100")
    first_ok = status == 200 and [m["id"] for m in body["agent_memberships"]] == ids[:100]
    status, body = get_json(server, f"{BASE}?limit=100&marker={ids[deep_index]}")
    expected = ids[deep_index + 1:deep_index + 101]
    deep_ok = status == 200 and [m["id"] for m in body["agent_memberships"]] == expected
    if not (first_ok and deep_ok):
        raise RuntimeError(f"unexpected list pages (first ok: {first_ok}, deep ok: {deep_ok})")
    return {"marker_row": deep_index + 1, "of_rows": len(ids), "rows_returned": len(expected),
            "verified": True}


# -- verdict -----------------------------------------------------------------------------------

def deep_page_verdict(figures: dict) -> dict:
    """The page after 90% of the table costs what the first page costs (keyset paging), at
    every concurrency."""
    checks = {}
    for c in CONCURRENCY:
        first, deep = figures[f"c{c}"]["list_first_page"], figures[f"c{c}"]["list_deep_page"]
        ratio = deep["p50_ratio_to_first_page"]
        checks[f"c{c}"] = {"deep_p50_ms": deep["p50_ms"], "first_p50_ms": first["p50_ms"],
                           "p50_ratio": ratio, "target_max": DEEP_PAGE_MAX_RATIO,
                           "pass": ratio <= DEEP_PAGE_MAX_RATIO and deep["errors"] == 0}
    checks["all_pass"] = all(c["pass"] for c in checks.values())
    return checks


def neutron_verdict(reference: dict, results: dict) -> dict:
    """Ours against neutron 29 serving the same resource through our plugin, both measured
    in this run on one MariaDB database (NEUTRON_TARGETS, per operation and concurrency).

    ``x_address_scopes`` compares with stock neutron's own address-scopes (core Neutron's
    cost per request), ``x_neutron_ours_through_pymysql`` takes ours through neutron's
    MariaDB driver (when ours was measured through mysqlclient's),
    ``x_neutron_vs_ours_on_postgresql`` takes ours from the PostgreSQL
    production layout of this run instead (neutron's migrations do not run on PostgreSQL,
    so that one crosses databases), and ``x_neutron_at_our_postgresql_floor`` what ours
    would reach at that layout's floor (HTTP floor + database floor): all for information.
    """
    import neutron_reference  # bench/neutron_reference.py

    if "ours_agent_memberships" not in reference:
        return {"all_pass": False, "not_measured": reference}
    ours_pg = results.get("postgresql", {}).get("api-1x8+importer", {})
    checks: dict[str, Any] = {}
    for c in CONCURRENCY:
        key = f"c{c}"
        for op, target in NEUTRON_TARGETS.items():
            ours = reference["ours_agent_memberships"][key][op]["req_per_s"]
            neutron = reference["neutron29_agent_memberships"][key][op]["req_per_s"]
            scopes = reference["neutron29_address_scopes"][key][op]["req_per_s"]
            pymysql = reference.get("ours_agent_memberships_pymysql", {}).get(key, {}).get(
                op, {}).get("req_per_s")
            pg_op = "list_first_page" if op == "list_limit_100" else op
            pg = ours_pg.get(key, {}).get(pg_op, {}).get("req_per_s")
            floor = ours_pg.get("vs_floor", {}).get(key, {}).get(pg_op, {}).get(
                "floor_req_per_s")
            checks[f"{key}_{op}"] = {
                "ours_req_per_s": ours, "neutron_req_per_s": neutron,
                "x_neutron": _ratio(ours, neutron), "target_x": target,
                "pass": bool(neutron) and ours / neutron >= target,
                "x_address_scopes": _ratio(ours, scopes),
                "x_neutron_ours_through_pymysql": _ratio(pymysql, neutron),
                "x_neutron_vs_ours_on_postgresql": _ratio(pg, neutron),
                "x_neutron_at_our_postgresql_floor": _ratio(floor, neutron)}
    checks["errors"] = neutron_reference.errors_in(reference)
    checks["ours_driver"] = reference["settings"]["ours_driver"]
    checks["all_pass"] = checks["errors"] == 0 and all(
        v["pass"] for v in checks.values() if isinstance(v, dict))
    return checks


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 1) if a and b else None


def _machine_busy_share(seconds: float) -> float:
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values) - values[3] - values[4], sum(values)
    busy, total = sample()
    time.sleep(seconds)
    busy2, total2 = sample()
    return (busy2 - busy) / max(1, total2 - total)


def floor_verdict(layout: str, figures: dict) -> dict:
    """Ours >= the layout's target fraction of the floor, per operation and concurrency."""
    target = FLOOR_TARGETS[layout]
    checks = {}
    for c in CONCURRENCY:
        for op in FLOOR_TARGET_OPERATIONS:
            v = figures["vs_floor"][f"c{c}"][op]
            # req/s, not the rounded fraction: 0.5995 of the floor is not 0.6
            met = v["floor_req_per_s"] > 0 and v["ours_req_per_s"] >= target * v["floor_req_per_s"]
            checks[f"c{c}_{op}"] = {"fraction": v["fraction"], "target": target,
                                    "pass": met and figures[f"c{c}"][op]["errors"] == 0}
    checks["all_pass"] = all(c["pass"] for c in checks.values())
    return checks


def table(out: dict) -> str:
    """The issue's table: per layout, concurrency and operation, the floors and ours."""
    lines = ["| backend | layout | c | operation | HTTP floor | DB floor | floor | ours | "
             "ours/floor | target | HTTP + SQL (/floor) | other load |", "|" + "---|" * 12]
    for backend, layouts in out["results"].items():
        for layout, figures in layouts.items():
            if "failed" in figures:
                lines.append(f"| {backend} | {layout} | | FAILED | | | | | | | | |")
                continue
            for c in CONCURRENCY:
                for op in OPERATIONS:
                    v = figures["vs_floor"][f"c{c}"][op]
                    target = ""
                    if op in FLOOR_TARGET_OPERATIONS:
                        met = out["verdict_vs_floor"][backend][layout][f"c{c}_{op}"]["pass"]
                        target = f">= {FLOOR_TARGETS[layout]} ({'met' if met else 'missed'})"
                    lines.append(
                        f"| {backend} | {layout} | {c} | {op} | {v['http_floor_req_per_s']} | "
                        f"{v['db_floor_req_per_s']} | {v['floor_req_per_s']} | "
                        f"{v['ours_req_per_s']} | {v['fraction']} | {target} | "
                        f"{v['http_sql_req_per_s']} ({v['http_sql_fraction']}) | "
                        f"{figures[f'c{c}'][op]['other_load']} |")
    lines.append("(req/s of the median of three alternating rounds; floor = 1/(1/HTTP + 1/DB); "
                 "HTTP + SQL = the HTTP floor's app running the DB floor's SQL, not a floor; "
                 "other load = share of the machine other users' processes took during ours)")
    return "\n".join(lines + _neutron_table(out.get("verdict_vs_neutron29")))


def _neutron_table(verdict: dict | None) -> list[str]:
    """Ours against neutron 29, both on one MariaDB database in this run."""
    if verdict is None:
        return []
    if "not_measured" in verdict:
        return ["", f"neutron 29 reference not measured: {verdict['not_measured']}"]
    lines = ["", "| c | operation | neutron 29 + our plugin | ours (same MariaDB) | x | target | "
             "x stock address-scopes | x, ours through PyMySQL | x, ours on PostgreSQL "
             "| x at our PostgreSQL floor |", "|" + "---|" * 10]
    for name, v in verdict.items():
        if isinstance(v, dict):
            c, op = name.split("_", 1)
            lines.append(f"| {c[1:]} | {op} | {v['neutron_req_per_s']} | {v['ours_req_per_s']} "
                         f"| {v['x_neutron']} | >= {v['target_x']} "
                         f"({'met' if v['pass'] else 'missed'}) | {v['x_address_scopes']} "
                         f"| {v['x_neutron_ours_through_pymysql']} "
                         f"| {v['x_neutron_vs_ours_on_postgresql']} "
                         f"| {v['x_neutron_at_our_postgresql_floor']} |")
    lines.append("(req/s, --seconds per operation, gunicorn 1x8 and noauth for both servers; "
                 f"ours through {verdict.get('ours_driver')}, neutron through mysql+pymysql; "
                 f"errors: {verdict['errors']})")
    return lines


# -- main --------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql",
                        help="comma-separated: sqlite, postgresql (default both)")
    parser.add_argument("--rows", type=int, default=100000,
                        help="memberships in the table for the list pages (default 100000)")
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--layouts", default="",
                        help="comma-separated subset of: " + ", ".join(LAYOUTS)
                        + " (default: all-in-one, plus api-1x8+importer on PostgreSQL)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="before each run wait up to S seconds for the machine to be "
                             "idle (a shared machine: other users' load lowers the figures)")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip neutron 29 (bench/neutron_reference.py, needs "
                             "tools/ensure-openstack and MariaDB): no verdict against it")
    args = parser.parse_args()
    QUIET["max_wait"] = args.wait_quiet
    # Requests per run: POSTs (then shows and DELETEs of them), and pages. A run is timed
    # as a whole, so one that lasts a fifth of a second (1,000 requests to a floor
    # answering 6,000/s) is at the mercy of any pause of the machine: three rounds of such
    # runs spread by 15-18 % (median max/min over three `make bench` runs, issue 12).
    args.requests = 200 if args.quick else 3000
    args.list_requests = 100 if args.quick else 2000
    args.seconds = 2.0 if args.quick else 4.0  # cap per run (the DELETEs always finish)
    args.repeats = 1 if args.quick else 3
    if args.quick:
        args.rows = min(args.rows, 5000)
    if args.rows < 200:
        parser.error("--rows must be at least 200")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in LAYOUTS_OF]
    if unknown:
        parser.error(f"unknown backend(s) {unknown}; choose from sqlite, postgresql")
    chosen = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if any(x not in LAYOUTS for x in chosen):
        parser.error(f"unknown layout in {chosen}; choose from {list(LAYOUTS)}")

    began = time.perf_counter()
    idle_check = _machine_busy_share(1.0)
    if idle_check > 0.2:
        log(f"the machine is {idle_check:.0%} busy before the bench starts: figures will be low")
    out: dict[str, Any] = {
        "benchmark": "midonet-membership API (bench/api.py)",
        "machine": {"cores": os.cpu_count(),
                    "note": "the client (this process, one thread per connection), the "
                            "server and PostgreSQL all share these cores",
                    "busy_before_start": round(idle_check, 2),
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "sqlalchemy": sa.__version__},
        "settings": {"rows": args.rows, "concurrency": list(CONCURRENCY),
                     "runs_per_figure": args.repeats,
                     "requests_per_run": {"create/show/delete": args.requests,
                                          "list": args.list_requests},
                     "max_seconds_per_run": args.seconds, "list_limit": 100,
                     "wait_quiet_seconds": args.wait_quiet,
                     "auth": "token (<state>/admin-token)", "quick": args.quick},
        "targets": {"vs_floor": FLOOR_TARGETS, "vs_neutron29_x": NEUTRON_TARGETS,
                    "deep_page_max_p50_ratio": DEEP_PAGE_MAX_RATIO},
        "results": {},
    }
    failed = False
    for backend in backends:
        layouts = [x for x in LAYOUTS_OF[backend] if x in chosen] if chosen else (
            DEFAULT_LAYOUTS_OF[backend])
        runner = with_postgresql if backend == "postgresql" else with_sqlite
        out["results"][backend] = {}
        for layout in layouts:
            try:
                figures = runner(lambda url, lay=layout: bench_layout(url, lay, args))
            except Exception as exc:  # report it in the document, keep measuring the rest
                log(f"{backend} {layout} failed: {exc}")
                out["results"][backend][layout] = {"failed": str(exc)[-2000:]}
                failed = True
                continue
            out["results"][backend][layout] = figures
            out.setdefault("verdict_vs_floor", {}).setdefault(backend, {})[layout] = (
                floor_verdict(layout, figures))
            out.setdefault("verdict_deep_page", {}).setdefault(backend, {})[layout] = (
                deep_page_verdict(figures))
            failed |= any(figures[f"c{c}"][op]["errors"]
                          or figures["vs_floor"][f"c{c}"][op]["floor_errors"]
                          for c in CONCURRENCY for op in OPERATIONS)
    if not args.no_reference:
        out["reference_neutron29"] = _measured_reference(args)
        out["verdict_vs_neutron29"] = neutron_verdict(out["reference_neutron29"],
                                                      out["results"])
        failed |= out["verdict_vs_neutron29"].get("errors", 0) > 0
    out["total_seconds"] = round(time.perf_counter() - began, 1)
    out["seconds_waiting_for_quiet"] = round(QUIET["waited"], 1)
    print(json.dumps(out, indent=2))
    print(table(out), file=sys.stderr, flush=True)
    return 1 if failed else 0


def _measured_reference(args: argparse.Namespace) -> dict:
    """The three-way reference of bench/neutron_reference.py at this run's concurrencies
    and duration per operation."""
    import neutron_reference

    if not (neutron_reference.NEUTRON_VENV / "bin" / "gunicorn").exists():
        return {"skipped": "no neutron venv: run tools/ensure-openstack"}
    try:
        return neutron_reference.measure(neutron_reference.parser().parse_args(
            ["--seconds", str(args.seconds), "--seed", "100" if args.quick else "200",
             "--rounds", "1" if args.quick else "3",
             "--concurrency", ",".join(map(str, CONCURRENCY))]))
    except Exception as exc:  # report it in the document; our own figures still stand
        log(f"the neutron reference failed: {exc}")
        return {"failed": str(exc)[-2000:]}


if __name__ == "__main__":
    sys.exit(main())
