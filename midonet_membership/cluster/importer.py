"""The importer: replays the task journal into the NSDB, in id order, exactly once.

One step reads the committed tasks after the NSDB's position, keeps the prefix that is safe to
apply (no unresolved id gap before it, no transaction cut in half), translates it and applies
it to the NSDB in one atomic transaction that also moves the position. Only then is the
position copied to the Neutron DB's ``midonet_task_state``, which therefore lags, never leads.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from midonet_membership.cluster import election
from midonet_membership.cluster.translators import PoisonTask, translate
from midonet_membership.cluster.wakeup import Wakeup
from midonet_membership.db import journal
from midonet_membership.db.engine import reader
from midonet_membership.db.models import tasks as tasks_table
from midonet_membership.nsdb.base import NSDB, Op, PositionConflict

LOG = logging.getLogger(__name__)


class Importer:
    def __init__(self, engine: Engine, nsdb: NSDB, batch_size: int = 500,
                 gap_timeout: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.nsdb = nsdb
        self.batch_size = batch_size
        self.gap_timeout = gap_timeout
        self.clock = clock
        self.position: int | None = None
        self._gaps: dict[tuple[int, int], float] = {}  # missing id range -> first seen

    def sync_position(self) -> None:
        """Start from the NSDB's position: the only one that is authoritative."""
        self.position = self.nsdb.get_position()

    def catch_up(self) -> int:
        """Apply everything applicable now; returns how many tasks were consumed."""
        total = 0
        while consumed := self.step():
            total += consumed
        return total

    def step(self) -> int:
        limit = self.batch_size
        while True:
            with reader(self.engine) as conn:
                fetched = journal.tasks_after(conn, self.position, limit)
                full = len(fetched) == limit
                safe = self._before_gaps(fetched)
                ready = self._whole_transactions(conn, safe, fetched, full)
            if ready or not full or len(safe) < len(fetched):
                break
            limit *= 2  # one transaction larger than a batch: read far enough to hold it
        if not ready:
            return 0
        ops = self._translate(ready)
        try:
            self.nsdb.apply(ops, self.position, ready[-1].id)
        except PositionConflict:
            LOG.warning("the NSDB position moved under us (another importer applied); "
                        "re-reading it")
            self.sync_position()
            return 0
        self.position = ready[-1].id
        self._gaps = {gap: seen for gap, seen in self._gaps.items() if gap[1] > self.position}
        journal.set_last_processed(self.engine, self.position)
        return len(ready)

    # -- what is safe to apply -------------------------------------------------------------
    def _before_gaps(self, fetched: Sequence[journal.Task]) -> list[journal.Task]:
        """The tasks before the first id gap that may still fill.

        With concurrent writers a transaction can take id N and commit after N+1 did; its
        task must not be skipped. A gap still open after ``gap_timeout`` belonged to a
        rolled-back transaction.
        """
        ready: list[journal.Task] = []
        expected = (self.position or 0) + 1  # ids start at 1
        now = self.clock()
        for task in fetched:
            if task.id != expected:
                gap = (expected, task.id - 1)
                first_seen = self._gaps.setdefault(gap, now)
                if now - first_seen < self.gap_timeout:
                    break
                LOG.warning("task ids %d-%d never committed within %.1fs; treating them as "
                            "rolled back", gap[0], gap[1], self.gap_timeout)
            ready.append(task)
            expected = task.id + 1
        return ready

    def _whole_transactions(self, conn: Connection, ready: list[journal.Task],
                            fetched: Sequence[journal.Task], full: bool) -> list[journal.Task]:
        """Cut ``ready`` before the first transaction that has tasks beyond it."""
        if not ready:
            return ready
        last = ready[-1].id
        later = {t.transaction_id for t in fetched if t.id > last and t.transaction_id}
        if full:
            ours = {t.transaction_id for t in ready if t.transaction_id}
            if ours:
                later |= set(conn.execute(
                    sa.select(tasks_table.c.transaction_id).distinct()
                    .where(tasks_table.c.id > fetched[-1].id,
                           tasks_table.c.transaction_id.in_(ours))).scalars())
        for index, task in enumerate(ready):
            if task.transaction_id in later:
                return ready[:index]
        return ready

    # -- translation -------------------------------------------------------------------------
    def _translate(self, ready: list[journal.Task]) -> list[Op]:
        """Ops of every transaction; a transaction with a poison task is skipped whole."""
        ops: list[Op] = []
        for _, group in itertools.groupby(ready, key=lambda t: t.transaction_id or t.id):
            group = list(group)
            try:
                group_ops = [op for task in group for op in translate(task)]
            except PoisonTask as exc:
                self._record_poison(group, exc)
                continue
            ops.extend(group_ops)
        return ops

    def _record_poison(self, group: list[journal.Task], exc: PoisonTask) -> None:
        """Skip policy: record every task of the transaction as failed, then go on."""
        failures = {}
        for task in group:
            try:
                translate(task)
                failures[task.id] = f"skipped with its transaction: {exc}"
            except PoisonTask as own:
                failures[task.id] = str(own)
        for task_id, error in failures.items():
            LOG.error("task %d cannot be applied, skipping it: %s", task_id, error)
        journal.record_failures(self.engine, failures)


def run(engine: Engine, nsdb: NSDB, nsdb_url: str, wakeup: Wakeup, stop: threading.Event,
        batch_size: int = 500, gap_timeout: float = 5.0) -> None:
    """Campaign for leadership; while leading, import until stopped or deposed."""
    identifier = f"importer-{uuid.uuid4()}"
    while not stop.is_set():
        try:
            with election.leadership(nsdb_url, identifier, stop) as lost:
                if lost is None:
                    return
                importer = Importer(engine, nsdb, batch_size=batch_size,
                                    gap_timeout=gap_timeout)
                _lead(importer, wakeup, stop, lost)
        except Exception as exc:  # e.g. ZooKeeper unreachable while campaigning
            LOG.warning("leader election failed (%s: %s); campaigning again",
                        type(exc).__name__, exc)
            stop.wait(1.0)


def _lead(importer: Importer, wakeup: Wakeup, stop: threading.Event,
          lost: threading.Event) -> None:
    synced = False
    while not stop.is_set() and not lost.is_set():
        try:
            if not synced:
                importer.sync_position()
                synced = True
            importer.catch_up()
        except Exception as exc:  # a database or NSDB outage: retry, never die
            LOG.warning("import step failed (%s: %s); retrying", type(exc).__name__, exc)
            synced = False
            stop.wait(0.5)
            continue
        wakeup.wait()
    if lost.is_set():
        LOG.warning("leadership lost; campaigning again")
