"""Which HTTP server: the HTTP floor and our app under each candidate, in the same run.

Candidates, each with the settings of the layout it would serve: gunicorn gthread 1 worker x
8 threads (``midonet-membership api --workers 1 --threads 8``), granian's WSGI interface 1
worker x 8 blocking threads, and cheroot with 16 threads (the all-in-one's
``ThreadedServer``). Granian is not a dependency: ``pip install granian`` first, else it is
reported as skipped. Each candidate serves

- ``floor``: bench/floors.py's trivial app, a show-sized and a list-sized body;
- ``ours``: our app as ``make_app`` builds it (token auth; no importer beside it, the same
  for all three) on one fresh PostgreSQL database seeded with 10,000 memberships: GET of
  one, ``GET ?limit=100`` and POST.

Keep-alive ``http.client`` connections at concurrency 1 and 8, median of three alternating
rounds (every candidate, then again). Prints JSON.

    .venv/bin/python bench/servers.py [--only floor|ours]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

from api import (
    BASE,
    BIN,
    CONCURRENCY,
    FloorServer,
    Fresh,
    Server,
    log,
    measure,
    seed,
    summarize,
    with_postgresql,
)

RESPONSES = {"create": (201, 90), "show": (200, 90), "delete": (204, 0),
             "list_first_page": (200, 9000), "list_deep_page": (200, 9000)}
REQUESTS = {"show (90 B body)": ("GET", f"{BASE}/x", None),
            "list limit=100 (9,000 B body)": ("GET", f"{BASE}?limit=100", None)}


def granian_command(port: int, factory: str) -> list[str]:
    """granian's WSGI interface, 1 worker x 8 blocking threads, serving ``factory()``."""
    return [str(BIN / "granian"), "--interface", "wsgi", "--workers", "1",
            "--blocking-threads", "8", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--factory", "--working-dir", str(Path(__file__).parent),
            factory]


class CandidateServer(FloorServer):
    def __init__(self, candidate: str) -> None:
        layout = "all-in-one" if candidate.startswith("cheroot") else "api-1x8+importer"
        super().__init__(layout, RESPONSES, "postgresql")  # as ours below
        if candidate.startswith("granian"):
            self.commands = [granian_command(self.port, "floors:app_from_environment")]
            self.env = {"FLOOR_RESPONSES": json.dumps(RESPONSES)}


CANDIDATES = ["gunicorn gthread 1x8", "granian wsgi 1x8", "cheroot 16 threads"]


class OurAppServer(Server):
    """Our app on ``database_url`` served by ``candidate``, without an importer."""

    def __init__(self, candidate: str, database_url: str) -> None:
        super().__init__(database_url, "api-1x8+importer")  # its state dir, config and port
        self.env = {"MM_DATABASE_URL": database_url, "MM_STATE_DIR": str(self.state)}
        if candidate.startswith("gunicorn"):
            self.commands = self.commands[:1]  # the api command, not the importer
        elif candidate.startswith("granian"):
            self.commands = [granian_command(self.port, "servers:our_app_from_environment")]
        else:
            self.commands = [[sys.executable, __file__, "--serve-cheroot", str(self.port)]]


def our_app_from_environment():
    """Our app for a server started by an import string (granian ``--factory``)."""
    from profile_app import build_app

    return build_app(os.environ["MM_DATABASE_URL"], Path(os.environ["MM_STATE_DIR"]))[0]


def serve_ours_with_cheroot(port: int) -> None:
    """Our app in the all-in-one's ThreadedServer (16 threads, the active ones of
    PostgreSQL), until SIGTERM."""
    from midonet_membership import stop_signal
    from midonet_membership.api.server import ThreadedServer, active_threads_default

    server = ThreadedServer(our_app_from_environment(), "127.0.0.1", port, 16,
                            active_threads_default("postgresql"))
    server.start()
    stop_signal.wait()
    server.stop()


def available(name: str) -> bool:
    return not name.startswith("granian") or importlib.util.find_spec("granian") is not None


def compare(servers: dict, requests: dict) -> dict:
    """Each request kind at each concurrency on each server, three alternating rounds."""
    runs: dict = {(n, c, r): [] for n in servers for c in CONCURRENCY for r in requests}
    for _ in range(3):
        for (name, c, r), found in runs.items():
            found.append(measure(servers[name], c, requests[r](), 4.0)[0])
    out: dict = {}
    for (name, c, r), found in runs.items():
        figures = summarize(found)
        out.setdefault(name, {}).setdefault(f"c{c}", {})[r] = {
            k: figures[k] for k in ("req_per_s", "runs_req_per_s", "p50_ms", "errors",
                                    "other_load")}
        log(f"{name} c={c} {r}: {figures['req_per_s']} req/s")
    return out


def floors() -> dict:
    servers = {name: CandidateServer(name).start() for name in CANDIDATES if available(name)}
    try:
        return compare(servers, {r: (lambda r=r: [REQUESTS[r]] * 2000) for r in REQUESTS})
    finally:
        for server in servers.values():
            server.stop()
            server.cleanup()


def ours(database_url: str) -> dict:
    fresh = Fresh()
    servers: dict = {}
    try:
        for name in CANDIDATES:  # one after the other: the first one migrates the schema
            if available(name):
                servers[name] = OurAppServer(name, database_url).start()
        ids = seed(database_url, 10000)
        return compare(servers, {
            "show": lambda: [("GET", f"{BASE}/{id_}", None) for id_ in ids],
            "list limit=100": lambda: [("GET", f"{BASE}?limit=100", None)] * 2000,
            "create": lambda: [("POST", BASE, json.dumps({"agent_membership": {
                "id": id_, "ip_address": ip}}).encode()) for id_, ip in fresh.take(2000)]})
    finally:
        for server in servers.values():
            server.stop()
            server.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("floor", "ours"))
    parser.add_argument("--serve-cheroot", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_cheroot:
        serve_ours_with_cheroot(args.serve_cheroot)
        return 0
    out: dict = {"benchmark": "HTTP server candidates (bench/servers.py)",
                 "skipped": [n for n in CANDIDATES if not available(n)],
                 "settings": {"concurrency": list(CONCURRENCY), "seconds_per_run": 4.0,
                              "rounds": 3, "ours": "token auth, PostgreSQL, no importer"}}
    if args.only != "ours":
        out["floor"] = floors()
    if args.only != "floor":
        out["ours"] = with_postgresql(ours)
    for kind in ("floor", "ours"):
        if kind in out:
            out[f"{kind}_median_req_per_s"] = {n: statistics.median(
                v["req_per_s"] for c in ("c1", "c8") for v in figures[c].values())
                for n, figures in out[kind].items()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
