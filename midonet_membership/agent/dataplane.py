"""Where the agent's decisions go: the data plane that builds or removes tunnels.

The kernel implementation (VXLAN/GRE links, nftables) is a later issue; it will implement the
same one method. Tests and ``--dry-run`` use :class:`RecordingDataPlane`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from midonet_membership.agent.agent import AgentState

LOG = logging.getLogger(__name__)


class DataPlane(Protocol):
    def apply(self, state: AgentState) -> None:
        """Make the tunnels match ``state`` (none unless active)."""


class RecordingDataPlane:
    """Keeps every state it was given, and logs it; builds nothing."""

    def __init__(self) -> None:
        self.states: list[AgentState] = []
        self._lock = threading.Lock()

    def apply(self, state: AgentState) -> None:
        with self._lock:
            self.states.append(state)
        LOG.debug("data plane (dry run): %s", state.describe())
