"""bench/api.py's verdict on a floor target judges req/s, not the fraction it prints rounded.

A run's all-in-one show reached 2,147.8 of a 3,582.4 req/s floor, 0.5995: the verdict said
met against 0.6 because it compared the fraction rounded to 0.60.
"""

from __future__ import annotations

import pytest


def _figures(bench_api, ours: float, http: float, db: float) -> dict:
    """One layout's figures with every operation measured alike."""
    def runs(req_per_s: float) -> dict:
        return {op: {"req_per_s": req_per_s, "p50_ms": 1.0, "errors": 0, "other_load": 0.0}
                for op in bench_api.OPERATIONS}
    vs = bench_api.vs_floor(runs(ours), runs(http), runs(db), runs(ours))
    figures = {"vs_floor": {f"c{c}": vs for c in bench_api.CONCURRENCY}}
    figures.update({f"c{c}": runs(ours) for c in bench_api.CONCURRENCY})
    return figures


@pytest.mark.parametrize(("ours", "met"), [(2147.8, False), (2149.5, True)])
def test_the_floor_verdict_uses_the_unrounded_fraction(bench_api, ours, met):
    figures = _figures(bench_api, ours, http=3698.3, db=114275.5)  # a floor of 3,582.4
    verdict = bench_api.floor_verdict("all-in-one", figures)
    assert verdict["c1_show"]["pass"] is met
    assert verdict["all_pass"] is met
    out = {"results": {"sqlite": {"all-in-one": figures}},
           "verdict_vs_floor": {"sqlite": {"all-in-one": verdict}}}
    assert f"| {verdict['c1_show']['fraction']} | >= 0.6 ({'met' if met else 'missed'}) |" \
        in bench_api.table(out)
