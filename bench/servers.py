"""Which HTTP server: the HTTP floor (bench/floors.py's trivial app) under each candidate.

Candidates, each with the settings of the layout it would serve: gunicorn gthread 1 worker x
8 threads (``midonet-membership api --workers 1 --threads 8``), granian's WSGI interface 1
worker x 8 blocking threads, and cheroot with 16 threads (the all-in-one's
``ThreadedServer``). Granian is not a dependency: ``pip install granian`` first, else it is
reported as skipped. Keep-alive ``http.client`` connections at concurrency 1 and 8, a show-
sized and a list-sized body, median of three alternating rounds. Prints JSON.

    .venv/bin/python bench/servers.py
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

from api import BASE, BIN, CONCURRENCY, FloorServer, log, measure, summarize

RESPONSES = {"create": (201, 90), "show": (200, 90), "delete": (204, 0),
             "list_first_page": (200, 9000), "list_deep_page": (200, 9000)}
REQUESTS = {"show (90 B body)": ("GET", f"{BASE}/x", None),
            "list limit=100 (9,000 B body)": ("GET", f"{BASE}?limit=100", None)}


class CandidateServer(FloorServer):
    def __init__(self, candidate: str) -> None:
        layout = "all-in-one" if candidate.startswith("cheroot") else "api-1x8+importer"
        super().__init__(layout, RESPONSES)
        if candidate.startswith("granian"):
            self.commands = [[str(BIN / "granian"), "--interface", "wsgi", "--workers", "1",
                              "--blocking-threads", "8", "--host", "127.0.0.1", "--port",
                              str(self.port), "--log-level", "warning", "--factory",
                              "--working-dir", str(Path(__file__).parent),
                              "floors:app_from_environment"]]
            self.env = {"FLOOR_RESPONSES": json.dumps(RESPONSES)}


CANDIDATES = ["gunicorn gthread 1x8", "granian wsgi 1x8", "cheroot 16 threads"]


def main() -> int:
    servers = {}
    out: dict = {"benchmark": "HTTP server candidates (bench/servers.py)", "results": {}}
    for name in CANDIDATES:
        if name.startswith("granian") and importlib.util.find_spec("granian") is None:
            out["results"][name] = {"skipped": "granian is not installed (pip install granian)"}
            continue
        servers[name] = CandidateServer(name).start()
    try:
        runs: dict = {(n, c, r): [] for n in servers for c in CONCURRENCY for r in REQUESTS}
        for _ in range(3):
            for (name, c, r), found in runs.items():
                found.append(measure(servers[name], c, [REQUESTS[r]] * 2000, 4.0)[0])
        for (name, c, r), found in runs.items():
            figures = summarize(found)
            out["results"].setdefault(name, {}).setdefault(f"c{c}", {})[r] = {
                k: figures[k] for k in ("req_per_s", "runs_req_per_s", "p50_ms", "errors",
                                        "other_load")}
            log(f"{name} c={c} {r}: {figures['req_per_s']} req/s")
    finally:
        for server in servers.values():
            server.stop()
            server.cleanup()
    out["median_of_all_figures_req_per_s"] = {n: statistics.median(
        v["req_per_s"] for c in ("c1", "c8") for v in out["results"][n][c].values())
        for n in servers}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
