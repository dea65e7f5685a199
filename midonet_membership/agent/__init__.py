"""The MidoNet agent side: identity, registration, liveness and activation.

``start_agent`` starts one agent (the all-in-one's ``--agents N`` calls it N times);
``run_agent`` is the ``midonet-membership agent`` command. Tests use :class:`Agent` directly.
"""

from __future__ import annotations

import logging
import os
import threading

from oslo_config import cfg

from midonet_membership import conf as config
from midonet_membership import nsdb, stop_signal
from midonet_membership.agent import identity
from midonet_membership.agent.agent import ERROR, Agent
from midonet_membership.agent.dataplane import (
    UNSUPPORTED,
    Built,
    DataPlane,
    DataPlaneError,
    RecordingDataPlane,
)
from midonet_membership.agent.state import ACTIVE, PENDING, AgentState

__all__ = ["ACTIVE", "ERROR", "PENDING", "UNSUPPORTED", "Agent", "AgentState", "Built",
           "DataPlane", "DataPlaneError", "RecordingDataPlane", "make_dataplane", "run_agent",
           "start_agent"]

LOG = logging.getLogger(__name__)


def make_dataplane(conf: cfg.ConfigOpts, dry_run: bool) -> DataPlane:
    """The kernel data plane in ``[agent] netns``, or the recording one for ``--dry-run``.

    The kernel one refuses the machine's root namespace unless ``[agent]
    allow_root_namespace`` is set (DataPlaneError says so).
    """
    if dry_run:
        return RecordingDataPlane()
    from midonet_membership.agent.kernel import KernelDataPlane

    agent = conf.agent
    return KernelDataPlane(agent.netns, vni=agent.vni, mtu=agent.tunnel_mtu,
                           device=agent.tunnel_device, overlay_address=agent.overlay_address,
                           allow_root_namespace=agent.allow_root_namespace)


def start_agent(conf: cfg.ConfigOpts, nsdb_url: str, state_dir: str,
                dataplane: DataPlane | None = None, hostname: str | None = None) -> Agent:
    """Start one agent whose identity and state live in ``state_dir``.

    The host id file follows ``state_dir`` unless ``[agent] host_id_file`` was set
    explicitly, so several local agents of one all-in-one keep distinct identities.
    """
    from midonet_membership.agent import interfaces  # pyroute2: only where an agent runs

    os.makedirs(state_dir, exist_ok=True)
    host_id_file = conf.agent.host_id_file
    if host_id_file == os.path.join(conf.state_dir, "midonet_host_id.properties"):
        host_id_file = os.path.join(state_dir, "midonet_host_id.properties")
    host_id = identity.load_or_create(host_id_file)
    # On ZooKeeper liveness_timeout is the agent's session timeout: a killed agent's
    # ephemeral liveness node vanishes after it, as its heartbeat row goes stale on SQLite.
    store = nsdb.connect(nsdb_url, role="agent", liveness_timeout=conf.agent.liveness_timeout)
    try:
        return Agent(host_id, store, dataplane or RecordingDataPlane(),
                     discover=lambda: interfaces.discover(conf.agent.netns or None),
                     hostname=hostname,
                     heartbeat_interval=conf.agent.heartbeat_interval,
                     interface_scan_interval=conf.agent.interface_scan_interval,
                     reconcile_interval=conf.agent.reconcile_interval,
                     state_file=os.path.join(state_dir, "agent-state.json")).start()
    except BaseException:
        store.close()
        raise


def run_agent(conf: cfg.ConfigOpts, state_dir: str | None = None, dry_run: bool = False,
              stop: threading.Event | None = None) -> None:
    """``midonet-membership agent``: run one agent until SIGINT/SIGTERM (or ``stop``)."""
    dataplane = make_dataplane(conf, dry_run)
    try:
        running = start_agent(conf, config.nsdb_url(conf, "agent"), state_dir or conf.state_dir,
                              dataplane)
    except BaseException:
        dataplane.close()
        raise
    print(f"midonet-membership agent: host {running.host_id} ({running.host.hostname}), "
          f"{running.state.describe()}", flush=True)
    if stop is None:
        stop_signal.wait()
    else:
        stop.wait()
    running.stop()
