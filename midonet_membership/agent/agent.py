"""One MidoNet agent: registers its host, proves it is alive, and follows the DEFAULT zone.

The agent never decides membership: it only reads the zone the cluster maintains. While its
host is not a member it is ``pending`` and has no tunnels; once the admin's membership reaches
the zone it is ``active`` with a tunnel to every other member.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable

from midonet_membership import metrics
from midonet_membership.agent.dataplane import UNSUPPORTED, Built, DataPlane
from midonet_membership.agent.state import ACTIVE, PENDING, AgentState, state_from_zone
from midonet_membership.nsdb.base import NSDB, Host, Interface, ObservedState, TunnelZone, Watch

__all__ = ["ACTIVE", "ERROR", "PENDING", "UNSUPPORTED", "Agent", "AgentState"]
ERROR = "error"
# Why a host is pending, as its agent reports it: before its first read of the zone (it
# registers first, so the host is listed from the start), then while it is not a member.
ZONE_NOT_READ = "has not read the DEFAULT tunnel zone yet"
NOT_A_MEMBER = "not a member of the DEFAULT tunnel zone"

LOG = logging.getLogger(__name__)


class Agent:
    """Registers the host, keeps its liveness, and reconciles the data plane with the zone.

    Usage::

        agent = Agent(host_id, nsdb.connect(url, role="agent"), RecordingDataPlane()).start()
        agent.wait_for(lambda s: s.status == ACTIVE, timeout=5)
        agent.stop()

    ``state`` is what the data plane was last given successfully; it changes on a zone event
    (a watch, never a poll) or on a retry after a data plane failure. ``observed`` is what the
    data plane says it built; the agent writes it into its own host record for the admin.
    Every ``reconcile_interval`` seconds the data plane converges again to the desired state,
    so a device or an entry removed behind the agent's back comes back.

    Two threads reconcile: the watch's (a zone change) and the heartbeat's (the periodic pass,
    a retry). The desired state is the zone's verdict plus the peers' VTEP MACs, kept apart
    and combined under ``_reconciling``: only the watch sets the verdict, so it only moves
    forward, and MACs read meanwhile (NSDB round trips, no lock held) only annotate the peers
    the verdict names when they are merged. A heartbeat that read MACs for an older zone can
    neither bring back a removed peer nor re-activate a host that was removed.
    """

    def __init__(self, host_id: str, nsdb: NSDB, dataplane: DataPlane,
                 interfaces: tuple[Interface, ...] = (), hostname: str | None = None,
                 heartbeat_interval: float = 1.0, state_file: str | None = None,
                 discover: Callable[[], tuple[Interface, ...]] | None = None,
                 interface_scan_interval: float = 10.0,
                 reconcile_interval: float = 2.0) -> None:
        """``discover``: reads the host's interfaces; given, it replaces ``interfaces`` and
        runs again every ``interface_scan_interval`` seconds."""
        self._discover = discover
        if discover is not None:
            interfaces = discover()
        self.host = Host(host_id, hostname or socket.gethostname(), interfaces,
                         vtep_mac=dataplane.vtep_mac(host_id))
        self.nsdb = nsdb
        self.dataplane = dataplane
        self.heartbeat_interval = heartbeat_interval
        self.interface_scan_interval = interface_scan_interval
        self.reconcile_interval = reconcile_interval
        self.state_file = state_file
        self.state = AgentState(host_id, PENDING)  # what the data plane was last given
        # what it said it built (or why it could not)
        self.observed = ObservedState(PENDING, ZONE_NOT_READ)
        # Written only under ``_reconciling``: the zone's verdict (by the watch's thread
        # alone, without MACs), and the VTEP MACs read from the host records of its peers
        # (replaced, never changed in place, so a reader without the lock may iterate it).
        self._desired = self.state
        self._peer_macs: dict[str, str] = {}
        self._zone_known = False  # until the watch's first snapshot
        self._in_sync = False
        self._closed = False
        self._reported: ObservedState | None = None  # the last observed state written
        self._reconciling = threading.Lock()
        self._host_lock = threading.Lock()  # one writer of our host record at a time
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._report_wanted = threading.Event()
        self._watch: Watch | None = None
        self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                           name=f"heartbeat-{host_id[:8]}")
        self._reporter = threading.Thread(target=self._report_loop, daemon=True,
                                          name=f"report-{host_id[:8]}")

    @property
    def host_id(self) -> str:
        return self.host.id

    def start(self) -> Agent:
        self._write_state()  # an operator sees "pending" from the moment the host is listed
        self.host = dataclasses.replace(self.host, observed=self.observed)
        self.nsdb.register_host(self.host)
        self.nsdb.heartbeat(self.host_id)
        metrics.AGENT_LAST_HEARTBEAT.labels(self.host_id).set_to_current_time()
        metrics.AGENTS.add(self.host_id, self._observed_for_metrics)
        self._heartbeat.start()
        self._reporter.start()
        # Nothing is applied before the watch's first snapshot: applying "pending" now would
        # tear down what a restarted agent's host still uses (reconcile, don't replay).
        self._watch = self.nsdb.watch_tunnel_zone(self._on_zone, host_id=self.host_id)
        LOG.info("agent for host %s (%s) registered; waiting for membership", self.host_id,
                 self.host.hostname)
        return self

    def stop(self) -> None:
        """Stop following the zone; what the data plane built stays for the next start."""
        self._stop.set()
        self._report_wanted.set()
        if self._watch is not None:
            self._watch.cancel()
        for thread in (self._heartbeat, self._reporter):
            if thread.is_alive():
                thread.join(timeout=5)
        with self._reconciling:
            self._closed = True
            self.dataplane.close()
        self.nsdb.close()  # ends ZooKeeper liveness at once
        metrics.AGENTS.remove(self.host_id)

    def wait_for(self, predicate: Callable[[AgentState], bool], timeout: float) -> AgentState:
        """Block until the state satisfies ``predicate``; raises TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.state), timeout):
                raise TimeoutError(f"agent {self.host_id}: state is {self.state}")
            return self.state

    def wait_for_observed(self, predicate: Callable[[ObservedState], bool],
                          timeout: float) -> ObservedState:
        """Block until what the data plane built satisfies ``predicate``."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.observed), timeout):
                raise TimeoutError(f"agent {self.host_id}: observed {self.observed}")
            return self.observed

    def _on_zone(self, zone: TunnelZone | None, members: dict[str, str]) -> None:
        """The watch's thread, the only one that sets the zone's verdict: the watch never
        goes back in time, so neither does ``_desired``."""
        verdict = state_from_zone(self.host_id, zone, members)
        self._reconcile(verdict=verdict, macs=self._read_peer_macs(verdict))

    def _read_peer_macs(self, state: AgentState) -> dict[str, str]:
        """The VTEP MACs the peers of ``state`` published that are not known yet (one host
        read each, holding no lock: on ZooKeeper each is a round trip).

        ``state`` may be outdated by the time they are read: :meth:`_reconcile` keeps only
        those of the peers the zone still names. A data plane that builds nothing has no
        MAC of its own and needs none: no reads.
        """
        if self.host.vtep_mac is None or not state.peers:
            return {}
        known = self._peer_macs
        found = {}
        for host_id, _ip in state.peers:
            if host_id in known:
                continue
            try:
                status = self.nsdb.get_host(host_id)
            except Exception as exc:  # the NSDB briefly away: the periodic pass retries
                LOG.debug("cannot read host %s: %s", host_id, exc)
                continue
            if status is not None and status.host.vtep_mac:
                found[host_id] = status.host.vtep_mac
        return found

    def _merge(self, verdict: AgentState | None, macs: dict[str, str]) -> AgentState:
        """Take the watch's new ``verdict`` (if any) and the MACs read since, and give the
        state to apply. Under ``_reconciling``; ``_peer_macs`` is replaced, never changed
        in place, and keeps the MACs of the verdict's peers only: a MAC read for a peer
        the zone removed meanwhile is dropped (a re-added peer is read again)."""
        if verdict is not None:
            self._zone_known = True
            self._desired = verdict
        state = self._desired
        if macs or (verdict is not None and self._peer_macs):
            peers = dict(state.peers)
            kept = {h: m for h, m in self._peer_macs.items() if h in peers}
            kept.update((h, m) for h, m in macs.items() if h in peers)
            self._peer_macs = kept
        if not self._peer_macs:
            return state
        return dataclasses.replace(state, peer_macs=tuple(sorted(self._peer_macs.items())))

    def _reconcile(self, periodic: bool = False, verdict: AgentState | None = None,
                   macs: dict[str, str] | None = None) -> None:
        """Give the data plane the state the zone asks for, unless it already has it.

        ``periodic``: converge even when nothing changed here, to heal what changed in the
        kernel (a deleted device, entry or table) and to read the admission counter.
        ``verdict``: the zone's new verdict (the watch's thread only); ``macs``: peers' VTEP
        MACs read without the lock (see :meth:`_merge`).

        Never raises: it runs on the NSDB watch's thread, which must survive a data plane
        failure. A failed apply leaves ``state`` as it was, is reported as ``error`` and is
        retried by the heartbeat loop until it succeeds.
        """
        with self._reconciling:
            if self._closed:  # after stop()
                return
            desired = self._merge(verdict, macs or {})
            if not self._zone_known:  # before the watch's first snapshot
                return
            if not periodic and self._in_sync and desired == self.state:
                return
            try:
                built = self.dataplane.apply(desired)
            except Exception as exc:
                self._in_sync = False
                LOG.exception("data plane could not apply (%s); will retry", desired.describe())
                self._observe(desired, Built(ERROR, f"{type(exc).__name__}: {exc}"))
                return
            self._in_sync = True
            changed = desired != self.state
            if changed:  # counted before the state shows: no scrape sees "active" uncounted
                metrics.AGENT_ZONE_UPDATES.labels(self.host_id).inc()
            self._observe(desired, built)
            if not changed:
                return
            if LOG.isEnabledFor(logging.INFO):
                LOG.info("%s", desired.describe_change(self.state))
            with self._changed:
                self.state = desired
                self._changed.notify_all()
            self._report_wanted.set()  # the zone position moved with it
            self._write_state()

    def _watch_failure(self) -> Built | None:
        """An NSDB watch that cannot follow the zone makes the agent ``error``: what it built
        may be stale, and it must not look alive and silent."""
        failure = self._watch.failure() if self._watch is not None else None
        return None if failure is None else Built(ERROR, f"NSDB watch failed: {failure}")

    def _observe(self, desired: AgentState, built: Built) -> None:
        """Record what was built; the reporter thread writes it (off the activation path)."""
        built = self._watch_failure() or built
        if desired.status != ACTIVE and built.state != ERROR:
            observed = ObservedState(PENDING, NOT_A_MEMBER,
                                     admission_drops=built.admission_drops)
        else:
            observed = ObservedState(
                built.state, built.reason, desired.tunnel_type, built.tunnels,
                len(desired.peers), None, built.admission_drops)
        if observed == self.observed:
            return
        with self._changed:
            self.observed = observed
            self._changed.notify_all()
        self._report_wanted.set()

    def _observed_for_metrics(self) -> ObservedState:
        """What the data plane built now, with the zone position last reported."""
        reported = self.host.observed
        position = reported.zone_position if reported is not None else None
        return dataclasses.replace(self.observed, zone_position=position)

    def _report_loop(self) -> None:
        """Write the observed state into our own host record whenever it changes, at once
        after a quiet heartbeat interval, else at most once per interval: every agent
        reports after every zone change, so a stream of activations would cost a read and
        a write per agent per activation (O(agents) NSDB writes each; bench/activation.py:
        150 ms of agents' CPU per activation with 200 agents, p99 188 ms instead of 69 ms).

        ``zone_position`` is the importer's position read after the apply: every change up
        to it is applied unless a newer zone event is still on its way (then another report
        follows it).
        """
        last_report = -math.inf
        while True:
            self._report_wanted.wait()
            pause = last_report + self.heartbeat_interval - time.monotonic()
            if pause > 0 and self._stop.wait(pause):
                return
            self._report_wanted.clear()
            if self._stop.is_set():
                return
            last_report = time.monotonic()
            base = self.observed
            try:
                observed = dataclasses.replace(base, zone_position=self.nsdb.get_position())
                if observed != self.host.observed:
                    with self._host_lock:
                        self.host = dataclasses.replace(self.host, observed=observed)
                        self.nsdb.register_host(self.host)
                self._reported = base
            except Exception as exc:  # the NSDB briefly away: the next change or beat retries
                LOG.warning("cannot report the observed state: %s", exc)

    def _beat(self) -> None:
        now = time.monotonic()
        next_scan = now + self.interface_scan_interval if self._discover else math.inf
        next_reconcile = now + self.reconcile_interval
        beat_failed = False
        while not self._stop.wait(min(self.heartbeat_interval,
                                      max(0.0, next_scan - time.monotonic()),
                                      max(0.0, next_reconcile - time.monotonic()))):
            if time.monotonic() >= next_scan:
                self._rescan_interfaces()
                next_scan = time.monotonic() + self.interface_scan_interval
            try:
                self.nsdb.heartbeat(self.host_id)
                metrics.AGENT_LAST_HEARTBEAT.labels(self.host_id).set_to_current_time()
                if beat_failed:
                    LOG.warning("heartbeat works again")
                beat_failed = False
            except Exception as exc:  # the NSDB may be briefly away; keep trying
                metrics.AGENT_HEARTBEAT_FAILURES.labels(self.host_id).inc()
                if not beat_failed:
                    LOG.warning("heartbeat failed: %s; retrying at every beat, logged again "
                                "when it works", exc)
                beat_failed = True
            if (watch_failure := self._watch_failure()) is not None:
                with self._reconciling:  # not over a reconcile's newer report
                    self._observe(self._desired, watch_failure)
            if time.monotonic() >= next_reconcile:
                next_reconcile = time.monotonic() + self.reconcile_interval
                # a peer may have published its MAC after we looked
                self._reconcile(periodic=True, macs=self._read_peer_macs(self._desired))
                if self._reported != self.observed:  # a failed report: try again
                    self._report_wanted.set()
            elif not self._in_sync:
                self._reconcile()

    def _rescan_interfaces(self) -> None:
        """Register the host again when its interfaces changed (an address was added)."""
        try:
            found = self._discover()
            if found == self.host.interfaces:
                return
            with self._host_lock:
                host = dataclasses.replace(self.host, interfaces=found)
                self.nsdb.register_host(host)
                self.host = host
        except Exception as exc:  # netlink or the NSDB briefly away: the next scan retries
            LOG.warning("interface scan failed: %s", exc)
            return
        LOG.info("host %s interfaces changed: %s", self.host_id, ", ".join(
            f"{i.name} {' '.join(i.ip_addresses) or '(no IPv4)'}" for i in found) or "none")

    def _write_state(self) -> None:
        """Leave the current state where an operator (or a test) can read it."""
        if not self.state_file:
            return
        tmp = f"{self.state_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.state.as_dict(), f)
        os.replace(tmp, self.state_file)
