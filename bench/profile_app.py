"""Where a request's time goes inside our WSGI app, without an HTTP server or a client.

The app is built as ``midonet-membership api`` builds it (``make_app`` with token auth, the
schema migrated and the CONFIG task written by ``prepare_database``) on a fresh database
(``--database postgresql``: a new ``mm_bench_<random>`` database on 127.0.0.1, dropped at
the end; ``sqlite``: a temporary file), seeded with ``--rows`` memberships. Then, for each
operation, ``--requests`` WSGI calls ``app(environ, start_response)`` in one thread, each
answered 2xx or the run fails: the app's own time per request (µs, best of three rounds:
other users' load only ever adds), the Python function calls per request (cProfile, a
count that does not depend on the machine's load) and, with ``--top N``, the N frames with
the most own time under cProfile. With ``--threads N``, each operation is also run from 1
and then from N threads of this process at once (the requests split between them): req/s and
the process's CPU per request, the two in the same run, to see what the GIL makes of
concurrency with no HTTP server in the way.

With ``--instructions``, instead: the instructions this process executes per request of
each operation, counted by valgrind's callgrind. A count does not move with the machine's
load or speed, so two checkouts (``PYTHONPATH=<checkout>``) compare to a fraction of a
percent where their req/s move by ±15 %: the script is run under callgrind once for
``--requests`` and once for three times as many requests of the operation after the same
setup (building the app, seeding, 300 requests to warm it), and the difference is divided
by the requests between them. It counts this process only: SQLite's work for SQLite, not
PostgreSQL's server's.

    .venv/bin/python bench/profile_app.py [--database postgresql|sqlite] [--requests 2000]
                                          [--rows 10000] [--top 12] [--threads 8]
                                          [--instructions [--operations list_first_page,...]]

Prints one JSON document on stdout. No importer runs: in the all-in-one it shares the
process (bench/api.py measures that), here only the request path is looked at.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api import posted_ip, seed, with_postgresql, with_sqlite  # bench/api.py

from midonet_membership.api.server import freeze_startup_objects

BASE = "/v2.0/agent-memberships"


def build_app(database_url: str, state: Path) -> tuple[Callable, str]:
    """The app and its admin token, configured as bench/api.py's servers are."""
    from oslo_config import cfg

    from midonet_membership import conf as config
    from midonet_membership import nsdb
    from midonet_membership.api import make_app
    from midonet_membership.api.auth import ensure_admin_token
    from midonet_membership.service import prepare_database

    conf_file = state / "neutron.conf"
    conf_file.write_text(f"[database]\nconnection = {database_url}\n")
    conf = cfg.CONF
    config.load(["--config-file", str(conf_file)], conf)
    conf.set_override("state_dir", str(state))
    engine = prepare_database(conf)
    token = ensure_admin_token(conf.admin_token_file)
    app = make_app(conf, engine, nsdb.connect(config.nsdb_url(conf, "api"), role="api",
                                              liveness_timeout=conf.agent.liveness_timeout))
    return app, token


def environ(method: str, path: str, token: str, body: bytes = b"") -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "9696", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:9696",
            "HTTP_X_AUTH_TOKEN": token, "HTTP_ACCEPT": "application/json",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr, "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0)}


def requests_of(op: str, n: int, round_: int, marker: str, token: str) -> list[dict]:
    """Fresh environs for ``n`` requests of ``op`` (creates and deletes of round ``round_``'s
    own memberships; a delete deletes what the same round's create made)."""
    ids = [str(uuid.uuid5(uuid.NAMESPACE_OID, f"{round_}-{i}")) for i in range(n)]
    if op == "create":
        return [environ("POST", BASE, token, json.dumps({"agent_membership": {
            "id": id_, "ip_address": posted_ip(round_ * n + i)}}).encode())
            for i, id_ in enumerate(ids)]
    if op in ("show", "delete"):
        method = "GET" if op == "show" else "DELETE"
        return [environ(method, f"{BASE}/{id_}", token) for id_ in ids]
    query = "?limit=100" + (f"&marker={marker}" if op == "list_deep_page" else "")
    return [environ("GET", BASE + query, token) for _ in range(n)]


OPERATIONS = ("create", "show", "list_first_page", "list_deep_page", "delete")


def run(app: Callable, requests: list[dict]) -> None:
    statuses: list[str] = []

    def start_response(status: str, headers: list, exc_info=None) -> None:
        statuses.append(status)
    for env in requests:
        b"".join(app(env, start_response))
        if not statuses[-1].startswith("2"):
            raise RuntimeError(f"{env['REQUEST_METHOD']} {env['PATH_INFO']}: {statuses[-1]}")


def profile(database_url: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="mm-profile-") as state:
        app, token = build_app(database_url, Path(state))
        ids = seed(database_url, args.rows)
        marker = ids[int(len(ids) * 0.9)]
        freeze_startup_objects()  # as the servers do before serving
        result: dict[str, Any] = {}
        times: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        for round_ in range(3):
            for op in OPERATIONS:
                batch = requests_of(op, args.requests, round_, marker, token)
                started = time.perf_counter()
                run(app, batch)
                times[op].append((time.perf_counter() - started) / len(batch))
        for op in OPERATIONS:
            profiler = cProfile.Profile()
            batch = requests_of(op, args.requests, 3, marker, token)
            profiler.enable()  # round 3, in the same order: the show reads its creates
            run(app, batch)
            profiler.disable()
            stats = pstats.Stats(profiler)
            result[op] = {"us_per_request": round(min(times[op]) * 1e6, 1),
                          "rounds_us": [round(t * 1e6, 1) for t in times[op]],
                          "calls_per_request": round(stats.total_calls / len(batch), 1)}
            if args.top:
                result[op]["top_own_time"] = _top(stats, args.top, len(batch))
            if args.threads > 1:
                result[op]["threads"] = {
                    str(n): threaded(app, requests_of(op, args.requests, 4 + n, marker, token), n)
                    for n in (1, args.threads)}
        return result


def threaded(app: Callable, requests: list[dict], n: int) -> dict[str, float]:
    """``requests`` sent from ``n`` threads at once: req/s and this process's CPU µs per
    request (all threads: the Python that holds the GIL and the system calls)."""
    failures: list[Exception] = []

    def send(part: list[dict]) -> None:
        try:
            run(app, part)
        except Exception as exc:  # a non-2xx answer: the run fails, as in one thread
            failures.append(exc)
    workers = [threading.Thread(target=send, args=(requests[i::n],)) for i in range(n)]
    wall, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if failures:
        raise failures[0]
    return {"req_per_s": round(len(requests) / wall),
            "cpu_us_per_request": round(cpu / len(requests) * 1e6, 1)}


WARM = 300  # requests before the counted ones: caches filled, statements prepared


def instructions(args: argparse.Namespace) -> dict[str, int]:
    """Instructions per request of each operation (the module's docstring says how)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian's package valgrind)")
    return {op: round((_counted(args, op, 3 * args.requests) - _counted(args, op, args.requests))
                      / (2 * args.requests)) for op in args.operations.split(",")}


def _counted(args: argparse.Namespace, op: str, n: int) -> int:
    """The instructions of one run of this script counting ``n`` requests of ``op``. Both
    runs of a pair must do the same setup: neither writes bytecode (``-B``: the first
    would compile what the second reads) and both hash strings alike (PYTHONHASHSEED)."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-B", __file__, "--database", args.database, "--rows", str(args.rows), "--counted",
         op, str(n), str(3 * args.requests)], capture_output=True, text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"I\s+refs:\s+([\d,]+)", proc.stderr)
    if proc.returncode or not found:
        raise RuntimeError(f"{op} x {n} under callgrind failed:\n{proc.stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def counted_run(database_url: str, op: str, n: int, most: int, rows: int) -> None:
    """What ``_counted`` runs under callgrind: ``n`` requests of ``op`` after a setup that
    does not depend on ``n`` (the memberships a show or delete reads are the ``most`` that
    any run of the pair reads, created either way)."""
    with tempfile.TemporaryDirectory(prefix="mm-profile-") as state:
        app, token = build_app(database_url, Path(state))
        marker = seed(database_url, rows)[int(rows * 0.9)]
        freeze_startup_objects()
        if op in ("show", "delete"):
            run(app, requests_of("create", WARM, 0, marker, token))
            run(app, requests_of("create", most, 1, marker, token))
        run(app, requests_of(op, WARM, 0, marker, token))
        run(app, requests_of(op, n, 1, marker, token))


def _top(stats: pstats.Stats, n: int, requests: int) -> list[str]:
    """The frames with the most own time: 'file:line(function) µs/request calls/request'."""
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [f"{Path(f).name}:{line}({fn}) {tt / requests * 1e6:.1f} us {nc / requests:.1f} calls"
            for (f, line, fn), (_cc, nc, tt, _ct, _callers) in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="also run each operation from this many threads at once")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request under valgrind instead")
    parser.add_argument("--operations", default=",".join(OPERATIONS),
                        help="with --instructions: the operations to count (comma-separated)")
    parser.add_argument("--counted", nargs=3, metavar=("OP", "N", "MOST"),
                        help=argparse.SUPPRESS)  # the run --instructions counts
    args = parser.parse_args()
    runner = with_postgresql if args.database == "postgresql" else with_sqlite
    if args.counted:
        op, n, most = args.counted
        runner(lambda url: counted_run(url, op, int(n), int(most), args.rows))
        return 0
    if args.instructions:
        print(json.dumps({
            "benchmark": "instructions per request of our WSGI app in-process, valgrind "
                         "callgrind (bench/profile_app.py --instructions)",
            "settings": {"database": args.database, "rows": args.rows,
                         "requests_counted": [args.requests, 3 * args.requests],
                         "operations": args.operations,
                         "warm_requests": WARM, "auth": "token", "threads": 1,
                         "http_server": "none", "importer": "none"},
            "instructions_per_request": instructions(args)}, indent=2))
        return 0
    out = {"benchmark": "our WSGI app in-process (bench/profile_app.py)",
           "settings": {"database": args.database, "requests_per_operation": args.requests,
                        "rows": args.rows, "auth": "token", "threads": 1,
                        "also_from_threads": args.threads if args.threads > 1 else None,
                        "http_server": "none", "importer": "none"},
           "operations": runner(lambda url: profile(url, args))}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
