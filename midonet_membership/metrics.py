"""Prometheus metrics of every process, declared once (``prometheus_client``).

Names follow Prometheus conventions: a ``midonet_`` prefix, the process part
(``api``, ``importer``, ``agent``), base units (``_seconds``), ``_total`` on counters.
Every process serves them on its own ``[metrics]`` listen address; the all-in-one, which runs
them all in one process, serves them at ``/metrics`` on its API port.

What costs something to know (the importer's lag, whether the databases answer) is measured
when Prometheus scrapes, by a collector, never on the request path: the API's only per-request
work is one counter increment and one histogram observation.

``midonet-membership api`` runs gunicorn workers: it sets ``PROMETHEUS_MULTIPROC_DIR`` before
this module is first imported, so that each worker writes its samples to a shared directory
that the master process serves (``prometheus_client``'s multiprocess mode).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from midonet_membership.nsdb.base import OBSERVED_STATES, ObservedState

LOG = logging.getLogger(__name__)
disable_created_metrics()  # no *_created series: counters' start times are not worth a series

# -- API ----------------------------------------------------------------------------------------
API_REQUESTS = Counter(
    "midonet_api_requests_total", "API requests answered, by operation and HTTP status.",
    ["operation", "status"])
API_REQUEST_DURATION = Histogram(
    "midonet_api_request_duration_seconds",
    "Time from a request's arrival in the app to its answer, by operation.", ["operation"],
    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

# -- importer -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImporterMetrics:
    tasks_applied: Counter
    failed_tasks: Counter
    apply_duration: Histogram
    leader: Gauge
    position: Gauge


@functools.cache
def importer() -> ImporterMetrics:
    """Created by the first importer of the process: unlabelled metrics have a sample from
    their creation, and an API or agent process must not show ``importer_leader 0``."""
    return ImporterMetrics(
        tasks_applied=Counter(
            "midonet_importer_tasks_applied_total",
            "Journal tasks applied to the NSDB (a skipped poison task counts in "
            "failed_tasks)."),
        failed_tasks=Counter(
            "midonet_importer_failed_tasks_total",
            "Journal tasks the importer could not translate and skipped with their "
            "transaction."),
        apply_duration=Histogram(
            "midonet_importer_apply_duration_seconds",
            "Time of one atomic NSDB apply (a batch of whole transactions plus the position).",
            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)),
        leader=Gauge("midonet_importer_leader",
                     "1 while this importer holds the leadership, else 0."),
        position=Gauge("midonet_importer_position",
                       "Id of the last task this importer applied to the NSDB."))


# -- agents -------------------------------------------------------------------------------------
AGENT_ZONE_UPDATES = Counter(
    "midonet_agent_zone_updates_total",
    "Changes of the DEFAULT zone the agent applied to its data plane.", ["host_id"])
AGENT_HEARTBEAT_FAILURES = Counter(
    "midonet_agent_heartbeat_failures_total",
    "Heartbeats the agent could not write to the NSDB.", ["host_id"])
AGENT_LAST_HEARTBEAT = Gauge(
    "midonet_agent_last_heartbeat_timestamp_seconds",
    "Unix time of the agent's last successful heartbeat.", ["host_id"])


class AgentsCollector(Collector):
    """The agents of this process as they observe themselves, read when Prometheus scrapes:
    the agent does no metric work when its state changes, the scrape reads its
    :class:`~midonet_membership.nsdb.base.ObservedState`."""

    def __init__(self) -> None:
        self._agents: dict[str, Callable[[], ObservedState]] = {}

    def add(self, host_id: str, observe: Callable[[], ObservedState]) -> None:
        self._agents[host_id] = observe

    def remove(self, host_id: str) -> None:
        """A stopped agent's series disappear instead of showing its last state forever."""
        self._agents.pop(host_id, None)
        for metric in (AGENT_ZONE_UPDATES, AGENT_HEARTBEAT_FAILURES, AGENT_LAST_HEARTBEAT):
            try:
                metric.remove(host_id)
            except KeyError:
                pass

    def describe(self):
        return []

    def collect(self):
        agents = {host_id: observe() for host_id, observe in list(self._agents.items())}
        if not agents:
            return
        state = GaugeMetricFamily(
            "midonet_agent_state", "1 for the state the agent observes itself in, 0 for "
            "the others.", labels=["host_id", "state"])
        tunnels = GaugeMetricFamily(
            "midonet_agent_tunnels", "Tunnel endpoints the agent's data plane has built.",
            labels=["host_id"])
        peers = GaugeMetricFamily(
            "midonet_agent_peers", "Other members of the DEFAULT zone the agent follows.",
            labels=["host_id"])
        drops = CounterMetricFamily(
            "midonet_agent_admission_drops", "Tunnel packets from non-members dropped on "
            "this host (the data plane's counter).", labels=["host_id"])
        position = GaugeMetricFamily(
            "midonet_agent_zone_position", "The importer's position when the agent last "
            "applied the zone (compare with midonet_importer_position).", labels=["host_id"])
        for host_id, observed in agents.items():
            for name in OBSERVED_STATES if observed.state in OBSERVED_STATES else (
                    *OBSERVED_STATES, observed.state):
                state.add_metric([host_id, name], float(observed.state == name))
            tunnels.add_metric([host_id], observed.tunnels)
            peers.add_metric([host_id], observed.peers)
            drops.add_metric([host_id], observed.admission_drops)
            if observed.zone_position is not None:
                position.add_metric([host_id], observed.zone_position)
        yield from (state, tunnels, peers, drops, position)


AGENTS = AgentsCollector()
REGISTRY.register(AGENTS)


# -- collected at scrape time -------------------------------------------------------------------
# (help, function): the function returns the value, or a list of (labels, value); or a group
# ({name: help}, function returning {name: value}): several gauges from one read
Samples = float | list[tuple[dict[str, str], float]]
Probe = (tuple[str, Callable[[], Samples]]
         | tuple[dict[str, str], Callable[[], dict[str, Samples]]])


class ProbeCollector(Collector):
    """Gauges whose values are read when Prometheus scrapes (a probe, a cheap query).

    ``probes`` maps a metric name to ``(help, function)``, or a group's name to ``({metric:
    help}, function)`` whose function returns ``{metric: value}`` (gauges that must come
    from one read, as the importer's lag and open gaps from one NSDB position); ``labels``
    (name -> value) are put on every sample, so that one process can hold several probes of
    one name (the API's and the importer's NSDB connections in the all-in-one). A probe that
    raises reports nothing and is logged once per failure streak, so an outage does not
    flood the log.
    """

    def __init__(self, probes: dict[str, Probe], labels: dict[str, str] | None = None) -> None:
        self.probes = probes
        self.labels = dict(labels or {})
        self._failing: set[str] = set()

    def describe(self):
        return []  # values are only known when collected

    def collect(self):
        for name, (text, probe) in self.probes.items():
            try:
                value = probe()
            except Exception as exc:
                if name not in self._failing:
                    LOG.warning("metric %s could not be read: %s: %s",
                                ", ".join(text) if isinstance(text, dict) else name,
                                type(exc).__name__, exc)
                    self._failing.add(name)
                continue
            self._failing.discard(name)
            if isinstance(text, dict):
                yield from (self._family(metric, help_, value[metric])
                            for metric, help_ in text.items())
            else:
                yield self._family(name, text, value)

    def _family(self, name: str, text: str, value: Samples) -> GaugeMetricFamily:
        samples = value if isinstance(value, list) else [({}, value)]
        names = list(self.labels) + (list(samples[0][0]) if samples else [])
        family = GaugeMetricFamily(name, text, labels=names)
        for labels, v in samples:
            family.add_metric([*self.labels.values(), *labels.values()], v)
        return family


def up_probe(check: Callable[[], object]) -> Callable[[], float]:
    """1 when ``check`` returns, 0 when it raises: the usual ``*_up`` gauge."""
    def probe() -> float:
        try:
            check()
        except Exception:
            return 0.0
        return 1.0
    return probe


def database_probes(engine) -> dict[str, Probe]:
    """``midonet_database_up``: the Neutron DB answers ``SELECT 1`` now."""
    def check() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    return {"midonet_database_up": ("1 when the Neutron database answered a query at the "
                                    "scrape, else 0.", up_probe(check))}


def nsdb_probes(store) -> dict[str, Probe]:
    """``midonet_nsdb_up``: the NSDB answers a read of the tunnel zone now."""
    return {"midonet_nsdb_up": ("1 when the NSDB answered a read at the scrape, else 0.",
                                up_probe(store.get_tunnel_zone))}


def importer_probes(engine, store) -> dict[str, Probe]:
    """The importer's lag behind the journal, measured from the NSDB's position (the
    authoritative one), and the failed tasks recorded in the Neutron DB."""
    import sqlalchemy as sa

    from midonet_membership.cluster.importer import backlog
    from midonet_membership.db import journal
    from midonet_membership.db.engine import reader
    from midonet_membership.db.models import memberships
    from midonet_membership.nsdb.base import HOLD_POSITION_BYTES

    def position() -> dict[str, Samples]:
        """One NSDB read (a position is up to ~110 KiB) and one journal query a scrape."""
        read = store.get_import_position()
        tasks, seconds = backlog(engine, read)
        return {"midonet_importer_lag_tasks": tasks, "midonet_importer_lag_seconds": seconds,
                "midonet_importer_open_gaps": len(read.gaps)}

    def failed() -> float:
        with reader(engine) as conn:
            return journal.failure_count(conn)

    def members() -> list[tuple[dict[str, str], float]]:
        with reader(engine) as conn:
            ids = conn.execute(sa.select(memberships.c.id)).scalars()
            return [({"host_id": host_id}, 1.0) for host_id in ids]
    return {
        "the importer's position": ({
            "midonet_importer_lag_tasks": "Committed journal tasks not yet applied to the NSDB.",
            "midonet_importer_lag_seconds": "Age of the oldest journal task not yet applied to "
                                            "the NSDB (0 when none).",
            "midonet_importer_open_gaps": (
                "Task id ranges below the importer's position not seen committed yet and not "
                "yet known never to commit (they grow while a Galera node is out or a "
                f"transaction is held open; past {HOLD_POSITION_BYTES // 1024} KiB of them "
                "newer tasks wait)."),
        }, position),
        "midonet_journal_failed_tasks": (
            "Tasks recorded as failed in midonet_task_failures (skipped by the importer).",
            failed),
        "midonet_agent_membership": (
            "1 for every host with an agent membership in the Neutron DB (the admin's "
            "intent; midonet_agent_state is the agent's outcome).", members),
    }


def register_probes(probes: dict[str, Probe], labels: dict[str, str] | None = None,
                    registry: CollectorRegistry = REGISTRY) -> ProbeCollector:
    collector = ProbeCollector(probes, labels)
    registry.register(collector)
    return collector


# -- serving ------------------------------------------------------------------------------------
def parse_listen(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as oslo options give it."""
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(address: str | None, registry: CollectorRegistry = REGISTRY) -> int | None:
    """Serve ``/metrics`` on ``address`` in a daemon thread; returns the bound port."""
    if not address:
        return None
    host, port = parse_listen(address)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    LOG.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


def multiprocess_registry() -> CollectorRegistry:
    """What the gunicorn master serves: every worker's samples, summed."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
