"""The network state database (NSDB) contract, shared by every backend.

The importer is the only writer of the tunnel zone and of its own position; agents write only
their own host record and liveness. Everything the importer changes goes through
:meth:`NSDB.apply`, which moves the position in the same atomic step: that compare-and-set is
what makes an importer crash, or a deposed leader that still believes it leads, unable to apply
a task twice.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import functools
import json
from collections.abc import Callable, Sequence

DEFAULT_TUNNEL_ZONE_NAME = "DEFAULT"


@dataclasses.dataclass(frozen=True)
class TunnelZone:
    id: str
    name: str
    type: str  # "vxlan" or "gre"


@dataclasses.dataclass(frozen=True)
class Interface:
    name: str
    ip_addresses: tuple[str, ...] = ()


OBSERVED_STATES = ("pending", "active", "unsupported", "error")


@dataclasses.dataclass(frozen=True)
class ObservedState:
    """What an agent has actually built, as it reports it in its own host record.

    ``member`` in the agents API is the admin's intent; this is the outcome, so an admin can
    tell "activated, tunnels not built yet / cannot be built" from "active".
    """

    state: str  # one of OBSERVED_STATES
    reason: str | None = None  # why not active (unsupported, error), in words
    tunnel_type: str | None = None
    tunnels: int = 0  # tunnel endpoints programmed (one per peer member)
    peers: int = 0  # other members the zone names
    zone_position: int | None = None  # the NSDB position when the agent last applied the zone
    admission_drops: int = 0  # VXLAN packets from non-members dropped on this host

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> ObservedState | None:
        if not data:
            return None
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclasses.dataclass(frozen=True)
class Host:
    """What an agent says about its host: it registers it at start and writes it again
    whenever its interfaces or its observed state change (the record is the agent's own)."""

    id: str
    hostname: str
    interfaces: tuple[Interface, ...] = ()
    vtep_mac: str | None = None  # the tunnel device's MAC, so peers can send unicast to it
    observed: ObservedState | None = None  # None until the agent reports


def host_record(host: Host) -> dict:
    """The host as the JSON both backends store (one shape, so they cannot drift)."""
    return {"id": host.id, "hostname": host.hostname,
            "interfaces": [{"name": i.name, "ip_addresses": list(i.ip_addresses)}
                           for i in host.interfaces],
            "vtep_mac": host.vtep_mac,
            "observed": host.observed.as_dict() if host.observed else None}


def host_from_record(data: dict) -> Host:
    """Records written before ``vtep_mac``/``observed`` existed read as not reported."""
    return Host(data["id"], data["hostname"], tuple(
        Interface(i["name"], tuple(i["ip_addresses"])) for i in data["interfaces"]),
        vtep_mac=data.get("vtep_mac"), observed=ObservedState.from_dict(data.get("observed")))


@dataclasses.dataclass(frozen=True)
class HostStatus:
    """A registered host as readers see it: the record plus its liveness."""

    host: Host
    alive: bool
    heartbeat_at: datetime.datetime | None


# The importer's vocabulary: each op is idempotent, so replaying a batch is harmless.
@dataclasses.dataclass(frozen=True)
class SetTunnelZone:
    """Create the zone, or change its type (and name) if it exists."""

    zone: TunnelZone


@dataclasses.dataclass(frozen=True)
class AddMember:
    """Make ``host_id`` a member with tunnel endpoint ``ip_address`` (upsert)."""

    host_id: str
    ip_address: str


@dataclasses.dataclass(frozen=True)
class RemoveMember:
    """Remove ``host_id`` from the zone; no-op when it is not a member."""

    host_id: str


Op = SetTunnelZone | AddMember | RemoveMember


@dataclasses.dataclass(frozen=True)
class Gap:
    """Task ids ``low``..``high`` not seen committed yet, although a later id was.

    ``seen_at`` (Unix time) is when the importer first saw the gap; ``evidence`` is what the
    Neutron DB said then about the transactions in flight (see
    :mod:`midonet_membership.cluster.inflight`), None until it was asked.
    """

    low: int
    high: int
    seen_at: float
    evidence: str | None = None

    def __contains__(self, task_id: int) -> bool:
        return self.low <= task_id <= self.high


# Past this stored size an importer takes no task after the position's ``high`` until
# enough gaps are final (cluster/importer.py, "The reader"): ZooKeeper keeps APPLY_RESERVE
# (128 KiB) of each multi-op for the position as it was before the apply, and the step that
# crossed this size may have added a gap per task it applied (up to max_ops_per_apply, ~30
# bytes each): 32 KiB + ~2,500 x 30 bytes stays under it.
HOLD_POSITION_BYTES = 32 * 1024


@dataclasses.dataclass(frozen=True)
class ImportPosition:
    """How far the importer got, stored atomically with every apply.

    One integer is not enough once ids commit out of order: ``high`` is the highest task id
    applied, ``gaps`` the ids below it that were never seen committed and may still be
    (every other id up to ``high`` was applied or recorded as failed), and ``config_id``
    the id of the CONFIG task the zone reflects, so that an older CONFIG committing late
    does not undo a newer one.
    """

    high: int | None = None
    gaps: tuple[Gap, ...] = ()
    config_id: int | None = None

    @classmethod
    def of(cls, position: ImportPosition | int | None) -> ImportPosition:
        """Accept the bare high-water id older callers (and the contract tests) pass."""
        return position if isinstance(position, ImportPosition) else cls(high=position)

    @property
    def done_through(self) -> int | None:
        """Every id up to this one is applied or failed: the low watermark ``task-clean``
        may delete up to."""
        if self.gaps:
            return min(g.low for g in self.gaps) - 1
        return self.high

    def is_pending(self, task_id: int) -> bool:
        """Whether a committed task with this id still has to be applied."""
        return self.high is None or task_id > self.high or any(
            task_id in g for g in self.gaps)

    def holds_new_tasks(self, limit: int = HOLD_POSITION_BYTES) -> bool:
        """Whether an importer at this position takes no task after ``high``: its open gaps
        make the stored form larger than ``limit``."""
        return bool(self.gaps) and len(self.encode()) > limit

    def encode(self) -> str:
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> str:
        """:meth:`encode`'s text, built once per position: the importer measures it
        (:meth:`holds_new_tasks`) at the step after the apply that wrote it.

        The stored form: a bare decimal when there is nothing but ``high`` (the form
        older versions wrote and read), else JSON.

        Each evidence is written once, in ``evidence``, and a gap names it by a token
        (``"#0"``): the gaps of one step share one, and on Galera every task leaves a gap,
        so a bulk create's gaps repeated it once per membership, in the apply that carries
        the bulk (``zookeeper_wire`` counts one gap entry per member). Older versions still
        read ``high`` and ``gaps``; a token is evidence they cannot settle, so their gaps
        stay open, which is safe."""
        if not self.gaps and self.config_id is None:
            return "" if self.high is None else str(self.high)
        tokens: dict[str, str] = {}
        gaps = [[g.low, g.high, g.seen_at,
                 None if g.evidence is None else tokens.setdefault(g.evidence,
                                                                    f"#{len(tokens)}")]
                for g in self.gaps]
        return json.dumps({"high": self.high, "config_id": self.config_id, "gaps": gaps,
                           "evidence": list(tokens)}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes | None) -> ImportPosition:
        if isinstance(text, bytes):
            text = text.decode()
        if not text:
            return cls()
        if not text.lstrip().startswith("{"):
            return cls(high=int(text))
        data = json.loads(text)
        table = data.get("evidence", [])
        return cls(high=data["high"], config_id=data.get("config_id"), gaps=tuple(
            Gap(low, high, seen_at, _evidence(rest[0] if rest else None, table))
            for low, high, seen_at, *rest in data.get("gaps", ())))


ZoneCallback = Callable[[TunnelZone | None, dict[str, str]], None]


def _evidence(stored: str | None, table: list[str]) -> str | None:
    """A gap's evidence as stored: a token into ``table``, or (as older versions wrote it)
    the evidence itself. A token with no entry (an older version rewrote the position
    without its table) is no evidence: it is asked for again."""
    if stored is None or not stored.startswith("#"):
        return stored
    index = stored[1:]
    return table[int(index)] if index.isdigit() and int(index) < len(table) else None


def members_seen_by(host_id: str | None, members: dict[str, str]) -> dict[str, str]:
    """What a watch scoped to ``host_id`` reports: no members while the host is not one."""
    return members if host_id is None or host_id in members else {}


class NSDBError(Exception):
    """Base of every error an NSDB backend raises on purpose."""


class NSDBUnavailable(NSDBError):
    """The NSDB cannot be reached now (a reader that started without it keeps trying)."""


class PositionConflict(NSDBError):
    """The stored position is not the one the caller expected: someone else applied."""


class Watch(abc.ABC):
    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop calling the callback. Safe to call twice."""

    def failure(self) -> str | None:
        """Why the watch cannot follow the zone right now (None while it can)."""
        return None


class NSDB(abc.ABC):
    """One connection to the NSDB. Thread-safe; open one per process with :func:`connect`."""

    # -- the importer's position -------------------------------------------------------------
    def get_position(self) -> int | None:
        """The highest task id applied, or None before any."""
        return self.get_import_position().high

    @abc.abstractmethod
    def get_import_position(self) -> ImportPosition:
        """The whole stored position (high-water id, open gaps, CONFIG id)."""

    @abc.abstractmethod
    def apply(self, ops: Sequence[Op], expected_position: ImportPosition | int | None,
              new_position: ImportPosition | int) -> None:
        """Apply ``ops`` in order and move the position, all or nothing.

        Raises PositionConflict (and changes nothing) when the stored position is not
        ``expected_position`` (all of it: two importers at the same high-water id with
        different gaps must not both apply a late task). A bare int means "that high-water
        id and nothing else".
        """

    def max_ops_per_apply(self) -> int | None:
        """The most member ops one apply can carry, or None when the backend has no limit."""
        return None

    # -- the tunnel zone -----------------------------------------------------------------------
    @abc.abstractmethod
    def get_tunnel_zone(self) -> TunnelZone | None:
        """The DEFAULT zone, or None before the first CONFIG was applied."""

    @abc.abstractmethod
    def list_members(self) -> dict[str, str]:
        """Members of the DEFAULT zone: host id -> tunnel IP."""

    @abc.abstractmethod
    def watch_tunnel_zone(self, callback: ZoneCallback, host_id: str | None = None) -> Watch:
        """Call ``callback(zone, members)`` now and after every change.

        Calls are never concurrent for one watch and always carry a consistent, current
        snapshot; several quick changes may be coalesced into one call.

        ``host_id`` scopes the watch to one host, as its agent needs it: while that host is
        not a member, ``members`` is empty and changes among the other members need not be
        reported (on ZooKeeper they are not, so pending agents cost nothing per change).
        """

    # -- hosts -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def register_host(self, host: Host) -> None:
        """Create or replace the host's record (an agent calls it at start, and again with
        its interfaces, VTEP MAC or observed state changed: it only ever writes its own)."""

    @abc.abstractmethod
    def heartbeat(self, host_id: str) -> None:
        """Prove the host's agent is alive now (ZooKeeper: keep an ephemeral node)."""

    @abc.abstractmethod
    def list_hosts(self) -> list[HostStatus]:
        """Every registered host with its liveness, ordered by id."""

    def get_host(self, host_id: str) -> HostStatus | None:
        return next((h for h in self.list_hosts() if h.host.id == host_id), None)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; ephemeral liveness of this connection ends."""

    def __enter__(self) -> NSDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
