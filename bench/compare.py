"""Ours from two checkouts, alternated on one database: did a change move req/s?

``make bench`` judges the targets, but one run's figures move by ±15 % between minutes, more
than most changes. This runs the same layout from two source trees (``BEFORE`` and
``AFTER``, each put first on the servers' ``PYTHONPATH``; this venv's libraries), both up at
once on one fresh database, and measures them in alternating rounds (the first of each round
swaps), so both see the same minutes: per operation and concurrency, the median req/s of each,
in how many rounds ``AFTER`` was ahead, and each one's CPU per request (its server, the client
and PostgreSQL: a change can save CPU where req/s cannot show it).

    .venv/bin/python bench/compare.py BEFORE AFTER [--database postgresql|mariadb|sqlite]
        [--driver mysql+mysqldb|mysql+pymysql] [--layout api-1x8|api-1x8+importer|all-in-one]
        [--operations create,delete,show,list_first_page] [--concurrency 1,8] [--rounds 6]

A round of ``create`` POSTs up to ``--requests`` fresh memberships for at most ``--seconds``;
``delete`` then deletes what they created (all of them, however long it takes); ``show``
reads them before; ``list_first_page`` is ``GET ?limit=100`` over the ``--rows`` seeded.
Prints one JSON document with every setting; progress on stderr. For a worktree of a
commit: ``git worktree add /tmp/before <commit>``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import api  # bench/api.py

LAYOUTS = {**api.LAYOUTS, "api-1x8": [["api", "--workers", "1", "--threads", "8"]]}
OPERATIONS = ("create", "show", "delete", "list_first_page")


def package_of(tree: str) -> str:
    """Where a server started with ``tree`` on its path imports our package from."""
    return subprocess.run(
        [sys.executable, "-c", "import midonet_membership; print(midonet_membership.__file__)"],
        env={"PYTHONPATH": tree}, cwd="/", capture_output=True, text=True,
        check=True).stdout.strip()


def start(url: str, layout: str, tree: str) -> api.Server:
    server = api.Server(url, layout, commands=LAYOUTS[layout])
    server.env = {"PYTHONPATH": tree}
    return server.start()


def one_round(server: api.Server, c: int, posted: api.Fresh, operations: list[str],
              args: argparse.Namespace) -> dict[str, api.Run]:
    """Each operation measured once."""
    runs: dict[str, api.Run] = {}
    created: list[str] = []
    if {"create", "show", "delete"} & set(operations):
        memberships = posted.take(args.requests)
        run, ok = api.measure(server, c, [("POST", api.BASE, json.dumps({"agent_membership": {
            "id": id_, "ip_address": ip}}).encode()) for id_, ip in memberships], args.seconds)
        runs["create"] = run
        created = [memberships[i][0] for i in ok]
    if "show" in operations:
        runs["show"] = api.measure(server, c, [("GET", f"{api.BASE}/{id_}", None)
                                               for id_ in created], args.seconds)[0]
    if created:  # the table back to --rows for the next round and the pages
        run, _ = api.measure(server, c, [("DELETE", f"{api.BASE}/{id_}", None)
                                         for id_ in created], math.inf)
        runs["delete"] = run
    if "list_first_page" in operations:
        runs["list_first_page"] = api.measure(
            server, c, [("GET", f"{api.BASE}?limit=100", None)] * args.requests,
            args.seconds)[0]
    return {op: runs[op] for op in operations}


def compare(url: str, args: argparse.Namespace) -> dict:
    trees = {"before": args.before, "after": args.after}
    servers: dict[str, api.Server] = {}
    try:
        for name, tree in trees.items():
            servers[name] = start(url, args.layout, tree)
        api.seed(url, args.rows)
        posted = api.Fresh()
        rounds: dict[str, dict[int, dict[str, list[api.Run]]]] = {
            name: {c: {op: [] for op in args.operations} for c in args.concurrency}
            for name in trees}
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for c in args.concurrency:
                for name in order:
                    for op, run in one_round(servers[name], c, posted, args.operations,
                                             args).items():
                        rounds[name][c][op].append(run)
            api.log(f"round {r + 1}/{args.rounds} done")
    finally:
        for server in servers.values():
            server.stop()
            server.cleanup()
    return {f"c{c}": {op: _figures(rounds["before"][c][op], rounds["after"][c][op])
                      for op in args.operations} for c in args.concurrency}


def _figures(before: list[api.Run], after: list[api.Run]) -> dict[str, Any]:
    """Median req/s of each side, and its CPU per request (bench/api.py's ``summarize``: the
    server with its importer, the client, and every PostgreSQL process during its runs)."""
    b, a = api.summarize(before), api.summarize(after)
    return {"before_req_per_s": b["req_per_s"], "after_req_per_s": a["req_per_s"],
            "after_over_before": round(a["req_per_s"] / b["req_per_s"], 3)
            if b["req_per_s"] else None,
            "rounds_after_ahead": sum(x.rate > y.rate for x, y in zip(after, before,
                                                                       strict=True)),
            "before_rounds": b["runs_req_per_s"], "after_rounds": a["runs_req_per_s"],
            "cpu_ms_per_req": {"before": b["cpu_ms_per_req"], "after": a["cpu_ms_per_req"]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="source tree of the code before the change")
    parser.add_argument("after", help="source tree of the code after it")
    parser.add_argument("--database", choices=("postgresql", "mariadb", "sqlite"),
                        default="postgresql")
    parser.add_argument("--driver", choices=("mysql+mysqldb", "mysql+pymysql"),
                        default="mysql+mysqldb", help="MariaDB's driver")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default=None,
                        help="default: all-in-one on SQLite, api-1x8+importer on PostgreSQL, "
                             "api-1x8 on MariaDB (the neutron comparison's)")
    parser.add_argument("--operations", default=",".join(OPERATIONS))
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rows", type=int, default=10000)
    args = parser.parse_args()
    args.operations = [op for op in args.operations.split(",") if op]
    unknown = set(args.operations) - set(OPERATIONS)
    if unknown:
        parser.error(f"unknown operations: {', '.join(sorted(unknown))}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.layout = args.layout or {"sqlite": "all-in-one", "postgresql": "api-1x8+importer",
                                  "mariadb": "api-1x8"}[args.database]
    args.before, args.after = (str(Path(t).resolve()) for t in (args.before, args.after))
    run = lambda url: compare(url, args)  # noqa: E731
    if args.database == "mariadb":
        figures = api.with_mariadb(run, args.driver)
    else:
        figures = (api.with_postgresql if args.database == "postgresql"
                   else api.with_sqlite)(run)
    print(json.dumps({
        "benchmark": "ours from two checkouts, alternated on one database (bench/compare.py)",
        "settings": {"database": args.database,
                     **({"driver": args.driver} if args.database == "mariadb" else {}),
                     "layout": " + ".join(" ".join(c) for c in LAYOUTS[args.layout]),
                     "before": package_of(args.before), "after": package_of(args.after),
                     "rounds": args.rounds, "concurrency": args.concurrency,
                     "requests_per_round": args.requests, "seconds_per_round": args.seconds,
                     "seeded_rows": args.rows, "client": "keep-alive http.client, one "
                     "connection per client thread (bench/api.py's measure)"},
        **figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
