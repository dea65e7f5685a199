"""Where the agent's decisions go: the data plane that builds or removes tunnels.

Two implementations of one small interface: :class:`RecordingDataPlane` (``--dry-run``, the
all-in-one's local agents, most tests) builds nothing, and
:class:`midonet_membership.agent.kernel.KernelDataPlane` builds VXLAN devices, FDB entries and
an nftables admission table in a network namespace. ``apply`` is a reconcile, not a replay:
it is called with the whole desired state on every zone change and periodically, and must
converge whatever it finds (nothing, a half-built device, a manual change) to that state.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Protocol

from midonet_membership.agent.state import ACTIVE, PENDING, AgentState

LOG = logging.getLogger(__name__)
UNSUPPORTED = "unsupported"


class DataPlaneError(Exception):
    """The data plane cannot run or apply as configured (the message says what to change)."""


@dataclasses.dataclass(frozen=True)
class Built:
    """What the data plane holds after an apply; the agent reports it in its host record."""

    state: str  # PENDING, ACTIVE or UNSUPPORTED (a failure raises instead: "error")
    reason: str | None = None
    tunnels: int = 0  # peers with a tunnel endpoint programmed
    admission_drops: int = 0  # VXLAN packets from non-members dropped, since the agent started


class DataPlane(Protocol):
    def apply(self, state: AgentState) -> Built:
        """Converge to ``state`` (no tunnels unless active) and say what is built."""

    def vtep_mac(self, host_id: str) -> str | None:
        """The MAC peers should send this host's unicast to, or None (nothing is built)."""

    def close(self) -> None:
        """Release sockets and helpers; what was built stays (a restart reconciles it)."""


class RecordingDataPlane:
    """Builds nothing and logs what it was given; keeps only the latest state, so a
    long-running ``agent --dry-run`` does not grow with every zone change."""

    def __init__(self) -> None:
        self.state: AgentState | None = None
        self.applied = 0  # how many applies, for tests that count reconciles
        self._lock = threading.Lock()

    def apply(self, state: AgentState) -> Built:
        with self._lock:
            self.state = state
            self.applied += 1
        LOG.debug("data plane (dry run): %s", state.describe())
        if state.status != ACTIVE:
            return Built(PENDING)
        return Built(ACTIVE, "dry run: nothing is built", tunnels=len(state.peers))

    def vtep_mac(self, host_id: str) -> str | None:
        return None

    def close(self) -> None:
        pass
