"""What the metrics and the console add to one API request, in microseconds.

The API's per-request metric work is ``Application._measure`` (one counter increment and one
histogram observation, their children looked up once and kept) and the page router of
``with_pages`` in front of the app (one dict lookup). Both are timed here in-process, against
a reference measured in the same run (an empty call of the same shape), because on a shared
2-core machine ``bench/api.py`` cannot resolve a few microseconds in a request of about a
millisecond. Prints one JSON document.

    .venv/bin/python bench/metrics_cost.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import timeit

from midonet_membership.api.app import Application, with_pages


def _per_call_us(fn, calls: int, repeat: int = 5) -> float:
    """Median over ``repeat`` runs of ``calls`` calls, in microseconds per call."""
    return statistics.median(timeit.repeat(fn, number=calls, repeat=repeat)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    app = Application([], [], lambda req, request_id: None)
    operation, status = "create_agent_membership", 201
    app._measure(operation, status, time.perf_counter())  # children created once, as served

    def measured() -> None:
        app._measure(operation, status, time.perf_counter())

    def reference() -> None:  # the same call shape without the metric work
        (lambda operation, status, started: None)(operation, status, time.perf_counter())

    inner = lambda environ, start_response: None  # noqa: E731
    routed = with_pages(inner, {"/metrics": inner, "/console/console.js": inner}, inner)
    environ = {"PATH_INFO": "/v2.0/agent-memberships", "HTTP_ACCEPT": "application/json"}
    load = os.getloadavg()
    figures = {
        "metrics_per_request_us": round(_per_call_us(measured, args.calls)
                                        - _per_call_us(reference, args.calls), 2),
        "page_router_per_request_us": round(
            _per_call_us(lambda: routed(environ, None), args.calls)
            - _per_call_us(lambda: inner(environ, None), args.calls), 2),
    }
    print(json.dumps({"benchmark": "per-request cost of the metrics and the console router",
                      "settings": {"calls": args.calls, "repeat": 5, "statistic": "median"},
                      "load_average_before": [round(x, 2) for x in load],
                      "note": "compare with the API's own request time (bench/api.py p50)",
                      **figures}, indent=1))


if __name__ == "__main__":
    main()
