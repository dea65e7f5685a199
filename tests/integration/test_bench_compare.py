"""bench/compare.py runs a layout from each of two source trees and reports both."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_trees_are_served_and_measured_in_alternating_rounds(tmp_path):
    before = tmp_path / "before"  # a copy of the package, put first on its servers' path
    shutil.copytree(ROOT / "midonet_membership", before / "midonet_membership")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), str(before), str(ROOT),
         "--database", "sqlite", "--rounds", "2", "--requests", "30", "--rows", "200",
         "--concurrency", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["settings"]["layout"] == "all-in-one"
    assert out["settings"]["before"] == str(before / "midonet_membership" / "__init__.py")
    assert out["settings"]["after"] == str(ROOT / "midonet_membership" / "__init__.py")
    assert set(out["c1"]) == {"create", "show", "delete", "list_first_page"}
    for figures in out["c1"].values():
        assert len(figures["before_rounds"]) == len(figures["after_rounds"]) == 2
        assert min(figures["before_rounds"] + figures["after_rounds"]) > 0
        assert 0 <= figures["rounds_after_ahead"] <= 2
        for side in ("before", "after"):  # each side's server did the work of its requests
            assert figures["cpu_ms_per_req"][side]["server"] > 0
