"""The agent package's shape: what a process imports to start, what the dry run keeps."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

from midonet_membership.agent import ACTIVE, PENDING, AgentState, RecordingDataPlane

PACKAGE = pathlib.Path(__file__).parents[2] / "midonet_membership"


def test_the_api_and_the_all_in_one_start_without_pyroute2_or_kazoo(tmp_path):
    """Only an agent needs netlink, only a ZooKeeper NSDB needs kazoo."""
    code = f"""
import sys
from oslo_config import cfg
from midonet_membership import conf, nsdb, service
from midonet_membership.api import make_app
from midonet_membership.db import engine
conf.load([], cfg.CONF)
store = nsdb.connect("sqlite:///{tmp_path}/nsdb.sqlite")
make_app(cfg.CONF, engine.create_engine("sqlite:///{tmp_path}/neutron.sqlite"), store)
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"kazoo", "pyroute2"}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"


def test_the_data_plane_and_the_agent_import_in_either_order():
    for first, second in (("dataplane", "agent"), ("agent", "dataplane")):
        subprocess.run([sys.executable, "-c", f"import midonet_membership.agent.{first}; "
                        f"import midonet_membership.agent.{second}"], check=True)


def test_db_never_imports_the_nsdb():
    """``db/`` is the Neutron DB; the view joining both stores lives with the API."""
    for path in (PACKAGE / "db").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("midonet_membership.nsdb"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("midonet_membership.nsdb")
                               for a in node.names), path


def test_the_dry_run_keeps_only_the_latest_state():
    dataplane = RecordingDataPlane()
    for n in range(1000):
        dataplane.apply(AgentState("h", ACTIVE, "vxlan", "198.51.100.1",
                                   (("p", f"198.51.100.{2 + n % 200}"),)))
    dataplane.apply(AgentState("h", PENDING))
    assert dataplane.state == AgentState("h", PENDING) and dataplane.applied == 1001
    assert not [v for v in vars(dataplane).values() if isinstance(v, (list, dict))]
