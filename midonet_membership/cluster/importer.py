"""The importer: replays the task journal into the NSDB, every committed task exactly once.

The reader
----------
Task ids come from an auto-increment column, and ids are *taken* in one order but *commit*
in another: with concurrent writers id N can commit after N+1, a rolled-back transaction
leaves an id that never fills (every 409 burns one), and on MariaDB Galera
``auto_increment_increment`` is the cluster size, so most ids never exist at all. The reader
therefore never waits for an id and never skips one:

- It applies every committed task it has not applied yet, at once, whatever lies before
  it. A task behind a missing id propagates with its usual latency.
- What it has applied is not one integer but an :class:`~midonet_membership.nsdb.base.
  ImportPosition`: ``high``, the highest id applied; ``gaps``, the ranges of ids below
  ``high`` never seen committed (each with when it was first seen and the database's
  evidence of what was in flight then); and ``config_id``, the CONFIG task the zone
  reflects. The NSDB stores it in the same atomic step as the ops, compared-and-set as a
  whole, so a crash, a restart or a deposed leader can neither skip nor repeat a task.
- Each step reads, in ONE statement (one snapshot), the tasks with ``id > high`` or inside
  an open gap (at most ``MAX_GAPS_PER_READ`` gap ranges per read; more are named in
  rotation, and a catch-up ends only after a whole rotation without progress). A task that
  commits late, however late, lies in a gap and is read by the first catch-up after its
  commit. On Galera the read waits for causality (``wsrep_sync_wait``).
- A gap is tracked until the database says it is final, never by a timeout: the first
  sight records which transactions were in flight (:mod:`.inflight`: a fresh PostgreSQL
  xid, InnoDB's ``innodb_trx``, on Galera every node's); once all of those ended, a read
  still missing the ids means they rolled back and the gap is dropped. A transaction held
  open for an hour keeps its gap for an hour, and only that: the tasks behind it are not
  held (unless gaps fill the position, below). A task cannot commit into a gap already
  dropped, because its writer would have been in flight when the gap was seen. Were the
  evidence ever wrong (a writer that took its id before it had a transaction id, which
  our write paths never do: they write the membership row first), the task is still in
  the journal, and ``midonet-db-manage resync`` puts the zone back in line with the
  memberships table.
- Gaps that cannot be told final pile up: while a Galera node is out of the primary
  component every task leaves one, and on PostgreSQL a transaction held open keeps every
  later gap open (its xid holds back the evidence). The position is stored whole with every
  apply, and ZooKeeper refuses a multi-op over ``jute.maxbuffer``, which then nothing could
  fix but a restart with a larger one. So once the stored position is larger than
  ``HOLD_POSITION_BYTES``, the importer *holds*: it reads only inside the open gaps (a late
  commit there is still applied), and the tasks past ``high`` wait, with an error logged
  once, until enough gaps are final. The backlog gauges show them waiting.

Why applying a late task after later ones is safe
-------------------------------------------------
Ops on different members commute, so only tasks of one member can disagree about order.
Two writes to one membership are serialised by the database: the primary key (and the
unique ``ip_address``) make a second INSERT wait for, then fail against, the first; a
DELETE locks the row. Each writer writes the row before it takes its task id, so the
later writer takes its id after the earlier one committed: for one member, id order *is*
commit order, and a step that sees the later task sees the earlier one (it committed
first) and applies both in id order. A read that left some tasks out (cut at the batch
size, or naming only some open gaps) may return the later one alone: the earlier ones of
its members are then read too. Transactions in one apply go by their first id, except
that each member's tasks go in id order. CONFIG is the exception (one row, no lock
between two API servers starting): a CONFIG older than ``config_id`` that commits late
is recorded as applied and changes nothing, so "the latest CONFIG wins" holds whatever
the commit order.

Whole and bounded transactions
------------------------------
A transaction's tasks commit together, so one statement sees all of them or none. When a
read was cut short (the batch limit, or more gaps than one query names), the transactions
it saw are completed by their ``transaction_id`` before anything is applied: interleaved
transactions (T1 = ids 1, 3 and T2 = 2, 4) are each applied in one NSDB apply. Several
whole transactions share an apply up to the backend's size limit
(:meth:`NSDB.max_ops_per_apply`, ZooKeeper's ``jute.maxbuffer``); the API refuses a bulk
request larger than that, so one transaction always fits. A transaction from another
writer that is still larger (written past the API) is applied in pieces rather than never,
with an error logged: losing it or blocking every later change would be worse.

Poison and outages
------------------
A task the translators refuse (bad id, bad IP, unknown type) is recorded in
``midonet_task_failures`` with its reason, its whole transaction with it, and the position
moves past them: never retried forever. Anything else failing (the Neutron DB, the NSDB) is
an outage: the step is retried with a growing backoff, logged once when it starts and once
when it ends.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import heapq
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from midonet_membership import metrics
from midonet_membership.cluster import election, inflight
from midonet_membership.cluster.translators import PoisonTask, translate
from midonet_membership.cluster.wakeup import Wakeup
from midonet_membership.db import journal
from midonet_membership.db.engine import reader
from midonet_membership.nsdb.base import (
    HOLD_POSITION_BYTES,
    NSDB,
    Gap,
    ImportPosition,
    Op,
    PositionConflict,
    SetTunnelZone,
)

LOG = logging.getLogger(__name__)
MAX_GAPS_PER_READ = 200  # gap ranges named in one read; more are read in rotation
BEHIND_SECONDS = 5.0  # catch-up progress is logged while the oldest pending task is this old
PROGRESS_INTERVAL = 2.0  # ...checked (one count query) and logged at most this often
GAP_CHECK_INTERVAL = 0.1  # seconds between asking whether open gaps are final
POSITION_COPY_INTERVAL = 0.1  # while busy, last_processed_id is copied at most this often
KEPT_READER_SECONDS = 60.0  # the longest a busy importer keeps its read connection


@dataclasses.dataclass
class _Plan:
    """One step's outcome: the ops to apply and where the position goes with them."""

    ops: list[Op]
    position: ImportPosition
    consumed: int  # tasks applied or recorded as failed
    failed: int = 0  # of which recorded as failed
    drained: bool = False  # the read returned everything committed at its snapshot


class Importer:
    def __init__(self, engine: Engine, nsdb: NSDB, batch_size: int = 500,
                 clock: Callable[[], float] = time.time,
                 observe: Callable[[Connection], str | None] = inflight.observe,
                 settled: Callable[[Connection, set], set] = inflight.settled,
                 hold_position_bytes: int = HOLD_POSITION_BYTES) -> None:
        """``observe``/``settled`` are the in-flight evidence (see :mod:`.inflight`); a
        test may replace them."""
        self.engine = engine
        self.nsdb = nsdb
        self.batch_size = batch_size
        self.hold_position_bytes = hold_position_bytes
        self._holding = False
        self.clock = clock
        self._observe = observe
        self._settled = settled
        self.position = ImportPosition()
        self.max_ops = nsdb.max_ops_per_apply()
        self._next_gap_check = 0.0
        self._gap_window = 0  # which MAX_GAPS_PER_READ gaps the next read names (rotating)
        self._copied: int | None = None  # the last done_through copied to last_processed_id
        self._copied_at = 0.0
        self._galera: bool | None = None  # learnt at the first read
        self._kept_reader: contextlib.ExitStack | None = None  # holds _kept_conn open
        self._kept_conn: Connection | None = None
        self._kept_reader_until = 0.0

    def sync_position(self) -> None:
        """Start from the NSDB's position: the only one that is authoritative."""
        self.position = self.nsdb.get_import_position()

    def catch_up(self, copy_position: bool = True, keep_reader: bool = False) -> int:
        """Apply everything committed before the call; returns how many tasks were consumed.

        ``copy_position``: end with ``last_processed_id`` up to date (:meth:`copy_position`);
        ``keep_reader``: keep the read connection for the next catch-up
        (:meth:`_read_connection`).
        :func:`_lead` leaves both to the moment its importer goes idle.

        It reads again at once only while a read leaves something behind (it was cut at the
        batch size, or named only some of the open gaps): a read that returned everything
        committed at its snapshot ends it. Reading again after such a read would only chase
        the commits that arrived during the apply, one or two per read and apply under a
        steady stream; those wake the importer anyway, and :func:`_lead`'s batch window
        lets them gather into one apply.

        While the oldest task still to apply is more than ``BEHIND_SECONDS`` old (a restart
        after downtime, a burst), it logs its progress every ``PROGRESS_INTERVAL`` seconds:
        done, still to go and the rate, so an operator sees it work and when it will be done.
        A catch-up shorter than ``PROGRESS_INTERVAL`` (the usual one) costs no extra query.
        """
        try:
            return self._catch_up(copy_position)
        finally:
            if not keep_reader:
                self.release_reader()

    def _catch_up(self, copy_position: bool) -> int:
        total = 0
        started = last_check = time.monotonic()
        logged = False
        idle_steps = 0
        while True:
            consumed, drained = self._step()
            total += consumed
            if drained:
                break
            if not consumed:
                # With more open gaps than one read names, each step reads the next window
                # of them: caught up only once every window was read without progress.
                idle_steps += 1
                if idle_steps >= self._gap_windows():
                    break
                continue
            idle_steps = 0
            now = time.monotonic()
            if now - last_check >= PROGRESS_INTERVAL:
                last_check = now
                remaining, behind = self.backlog()
                if behind > BEHIND_SECONDS:
                    LOG.info("importer catching up: %d tasks applied in %.0f s (%.0f tasks/s), "
                             "%d to go, %.0f s behind", total, now - started,
                             total / (now - started), remaining, behind)
                    logged = True
        if logged:
            elapsed = time.monotonic() - started
            LOG.info("importer caught up: %d tasks applied in %.1f s (%.0f tasks/s)", total,
                     elapsed, total / elapsed if elapsed else 0)
        if copy_position:
            self.copy_position()
        return total

    def copy_position(self, at_most_every: float = 0.0) -> None:
        """Copy the position back to the Neutron DB (``last_processed_id``) if it moved and
        the last copy is ``at_most_every`` seconds old.

        Why not at every step: the copy is a write transaction of its own, as costly as the
        step's read (on PostgreSQL ~0.3 ms of the importer's CPU, on SQLite it queues with
        the API's writers), and under a stream of creates a step carries a handful of them.
        The copy may lag, never lead: steps copy it every ``POSITION_COPY_INTERVAL`` while
        the importer is busy, and it is brought up to date when the importer goes idle."""
        if self.position_copy_due_in(at_most_every) != 0.0:
            return
        done = self.position.done_through
        journal.set_last_processed(self.engine, done)
        self._copied, self._copied_at = done, time.monotonic()

    def position_copy_due_in(self, at_most_every: float = POSITION_COPY_INTERVAL) -> float | None:
        """Seconds until :meth:`copy_position` with ``at_most_every`` would copy (0.0: now);
        None when the position has not moved since the last copy."""
        done = self.position.done_through
        if done is None or done == self._copied:
            return None
        return max(0.0, self._copied_at + at_most_every - time.monotonic())

    def _gap_windows(self) -> int:
        return max(1, -(-len(self.position.gaps) // MAX_GAPS_PER_READ))

    def backlog(self) -> tuple[int, float]:
        """Tasks still to apply and the age in seconds of the oldest of them."""
        return backlog(self.engine, self.position)

    def step(self) -> int:
        """Read, translate and apply once; returns how many tasks were consumed."""
        try:
            return self._step()[0]
        finally:
            self.release_reader()

    def _step(self) -> tuple[int, bool]:
        """:meth:`step`, and whether its read returned everything committed at its snapshot
        (not cut at the batch size, every open gap named)."""
        plan = self._plan()
        if plan.position == self.position:
            return 0, plan.drained
        started = time.perf_counter()
        try:
            self.nsdb.apply(plan.ops, self.position, plan.position)
        except PositionConflict:
            LOG.warning("the NSDB position moved under us (another importer applied); "
                        "re-reading it")
            self.sync_position()
            return 0, False
        measured = metrics.importer()
        measured.apply_duration.observe(time.perf_counter() - started)
        measured.tasks_applied.inc(plan.consumed - plan.failed)
        measured.failed_tasks.inc(plan.failed)
        if plan.position.high is not None:
            measured.position.set(plan.position.high)
        self.position = plan.position
        self.copy_position(at_most_every=POSITION_COPY_INTERVAL)
        return plan.consumed, plan.drained

    # -- reading -----------------------------------------------------------------------------
    def _plan(self) -> _Plan:
        position = self.position
        final: set[Gap] = set()
        start = self._gap_window % self._gap_windows() * MAX_GAPS_PER_READ
        self._gap_window += 1
        listed = position.gaps[start:start + MAX_GAPS_PER_READ]
        # Each statement a snapshot by itself (PostgreSQL's and MariaDB's reads always are):
        # what follows the read asks about transactions it saw committed, or evidence taken
        # after it. On SQLite that spares a BEGIN and a COMMIT a step.
        conn = self._read_connection()
        if self._galera is None:
            self._galera = inflight.is_galera(conn)
        if self._galera:
            inflight.read_causally(conn)
        if position.gaps and time.monotonic() >= self._next_gap_check:
            # Asked BEFORE the read that must still miss their ids; not at every step
            # (a gap costs nothing while open: tasks behind it do not wait for it).
            self._next_gap_check = time.monotonic() + GAP_CHECK_INTERVAL
            done = self._settled(conn, {g.evidence for g in position.gaps})
            final = {g for g in position.gaps if g.evidence in done}
        holding = self._holds(position)
        fetched = journal.pending_tasks(conn, position.high,
                                        [(g.low, g.high) for g in listed],
                                        self.batch_size, beyond_high=not holding)
        full = len(fetched) == self.batch_size
        read_through = fetched[-1].id if full else None
        # Where this read may have left pending tasks out: the ids from which it did.
        unread = [g.low for g in position.gaps[:start] + position.gaps[start + len(listed):]]
        if full:
            unread.append(read_through + 1)
        if holding:
            unread.append((position.high or 0) + 1)
        if unread and fetched:
            fetched = self._with_what_goes_first(conn, fetched, position, min(unread))
        # Final: its writers had all ended before a read that covered it and found
        # none of its ids.
        final = {g for g in final if g in listed
                 and (read_through is None or g.high < read_through)
                 and not any(t.id in g for t in fetched)}
        for gap in final:
            LOG.debug("task ids %d-%d never committed: their writers have ended",
                      gap.low, gap.high)
        units = self._fitting(_in_member_order(_transactions(fetched)))
        plan = self._translate(units, position, final)
        plan.drained = (not full and not holding and len(listed) == len(position.gaps)
                        and sum(map(len, units)) == len(fetched))
        if any(g.evidence is None for g in plan.position.gaps):
            # Taken after the read that showed the gaps (later evidence is as good).
            plan.position = _with_evidence(plan.position, self._observe(conn))
        return plan

    def _holds(self, position: ImportPosition) -> bool:
        """Whether the position is too large to take tasks past ``high``; logged when that
        starts and when it ends."""
        holding = position.holds_new_tasks(self.hold_position_bytes)
        if holding and not self._holding:
            LOG.error("the import position holds %d open id gaps (%d bytes, more than %d): "
                      "tasks after id %d wait until the Neutron DB tells enough gaps final "
                      "(a Galera node out of the primary component or a transaction held "
                      "open keeps them open); late commits inside the gaps are still "
                      "applied", len(position.gaps), len(position.encode()),
                      self.hold_position_bytes, position.high)
        elif self._holding and not holding:
            LOG.warning("the import position is back to %d open id gaps: tasks after id %d "
                        "are applied again", len(position.gaps), position.high)
        self._holding = holding
        return holding

    def _read_connection(self) -> Connection:
        """The connection the steps read on: each statement a snapshot by itself, and the
        same connection from step to step while the importer is busy, until
        :meth:`release_reader` (when it goes idle, after any failure, at the end of a
        :meth:`catch_up` or :meth:`step` of its own) or ``KEPT_READER_SECONDS``.

        Why: a connection of its own per step (the pool's checkout and check-in, the
        autocommit flag set and reset) was two fifths of the CPU of a step carrying one
        create (543 -> 329 µs, an ad hoc loop of ``catch_up``), and under a stream a step
        carries only the few that commit in one batch window."""
        if self._kept_reader is not None and time.monotonic() >= self._kept_reader_until:
            self.release_reader()
        if self._kept_reader is None:
            stack = contextlib.ExitStack()
            self._kept_conn = stack.enter_context(reader(self.engine, single_statement=True))
            self._kept_reader, self._kept_reader_until = stack, (
                time.monotonic() + KEPT_READER_SECONDS)
        return self._kept_conn

    def release_reader(self) -> None:
        """Give the read connection back to the pool (an idle importer holds none). One
        that died with the database cannot be closed cleanly, and need not be."""
        stack, self._kept_reader, self._kept_conn = self._kept_reader, None, None
        if stack is not None:
            try:
                stack.close()
            except sa.exc.SQLAlchemyError as exc:
                LOG.debug("the importer's read connection failed to close: %s", exc)

    def _with_what_goes_first(self, conn: Connection, fetched: list[journal.Task],
                              position: ImportPosition, unread: int) -> list[journal.Task]:
        """``fetched`` and the pending tasks that must be applied with it or before it,
        which a read that left something out from id ``unread`` on (cut at the batch size,
        naming only some open gaps, holding) may not have returned: the rest of its
        transactions, and each member's earlier tasks (a create that committed late, in a
        gap this read did not name, before the delete read past ``high``), with theirs in
        turn. Tasks found after the read may have earlier ones it did not see at all:
        theirs are looked for from the first pending id."""
        found = {t.id: t for t in fetched}
        new, low = fetched, unread
        while new:
            candidates = journal.tasks_of_transactions(
                conn, {t.transaction_id for t in new if t.transaction_id})
            below = max(t.id for t in new)
            if below > low:  # a cut read's usual case: nothing it returned lies past the cut
                candidates += journal.tasks_of_members(
                    conn, {t.resource_id for t in new if t.resource_id}, low, below)
            new = list({t.id: t for t in candidates
                        if t.id not in found and position.is_pending(t.id)}.values())
            found.update((t.id, t) for t in new)
            low = position.gaps[0].low if position.gaps else (position.high or 0) + 1
        return sorted(found.values(), key=lambda t: t.id)

    def _fitting(self, units: list[list[journal.Task]]) -> list[list[journal.Task]]:
        """The leading transactions that fit in one NSDB apply (at least one), counted in
        tasks: a task translates to one op at most."""
        if self.max_ops is None:
            return units
        kept: list[list[journal.Task]] = []
        size = 0
        for unit in units:
            if kept and size + len(unit) > self.max_ops:
                break
            if len(unit) > self.max_ops:
                LOG.error("transaction %s has %d tasks, more than the %d one NSDB apply can "
                          "hold (not written through the API?): applying it in pieces",
                          unit[0].transaction_id, len(unit), self.max_ops)
                return [unit[:self.max_ops]]
            kept.append(unit)
            size += len(unit)
        return kept

    # -- translation -------------------------------------------------------------------------
    def _translate(self, units: list[list[journal.Task]], position: ImportPosition,
                   final: set[Gap]) -> _Plan:
        """Ops of every transaction; a transaction with a poison task is skipped whole."""
        ops: list[Op] = []
        config_id = position.config_id
        consumed: set[int] = set()
        failed = 0
        for unit in units:
            unit_config = config_id  # the zone's CONFIG only if the whole unit applies
            try:
                unit_ops: list[Op] = []
                for task in unit:
                    task_ops = translate(task)
                    if any(isinstance(op, SetTunnelZone) for op in task_ops):
                        if unit_config is not None and task.id < unit_config:
                            LOG.info("CONFIG task %d committed after the newer CONFIG %d "
                                     "was applied: superseded", task.id, unit_config)
                            continue
                        unit_config = task.id
                    unit_ops += task_ops
            except PoisonTask as exc:
                self._record_poison(unit, exc)
                failed += len(unit)
            else:
                ops += unit_ops
                config_id = unit_config
            consumed |= {t.id for t in unit}
        return _Plan(ops, _advanced(position, consumed, final, config_id, self.clock()),
                     len(consumed), failed)

    def _record_poison(self, unit: list[journal.Task], exc: PoisonTask) -> None:
        """Skip policy: record every task of the transaction as failed, then go on."""
        failures = {}
        for task in unit:
            try:
                translate(task)
                failures[task.id] = f"skipped with its transaction: {exc}"
            except PoisonTask as own:
                failures[task.id] = str(own)
        for task_id, error in failures.items():
            LOG.error("task %d cannot be applied, skipping it: %s", task_id, error)
        journal.record_failures(self.engine, failures)


def backlog(engine: Engine, position: ImportPosition) -> tuple[int, float]:
    """Tasks ``position`` has still to apply, and the age in seconds of the oldest."""
    with reader(engine) as conn:
        return journal.backlog(conn, position.high, [(g.low, g.high) for g in position.gaps])


def _transactions(tasks: Sequence[journal.Task]) -> list[list[journal.Task]]:
    """Tasks grouped by transaction (a task without one is its own), ordered by first id."""
    units: dict[object, list[journal.Task]] = {}
    for task in tasks:
        units.setdefault(task.transaction_id or ("task", task.id), []).append(task)
    return sorted(units.values(), key=lambda unit: unit[0].id)


def _in_member_order(units: list[list[journal.Task]]) -> list[list[journal.Task]]:
    """Transactions by first id, except that one goes after another holding an earlier
    task of a member they share: each member's tasks are applied in id order. (T1 = create
    a, then delete m; T2 = create m, which committed before T1 deleted it: by first id T1
    would go first and leave m in the zone.) A cycle cannot come from writers that lock
    the rows they change; were one found, the rest keep their first-id order."""
    members = [t.resource_id for unit in units for t in unit if t.resource_id]
    if len(set(members)) == len(members):
        return units  # the usual step: no member twice, nothing to order
    later: list[set[int]] = [set() for _ in units]
    waits_for = [0] * len(units)
    last_unit: dict[str, int] = {}
    for _, member, index in sorted((t.id, t.resource_id, i) for i, unit in enumerate(units)
                                   for t in unit if t.resource_id):
        before = last_unit.get(member, index)
        if before != index and index not in later[before]:
            later[before].add(index)
            waits_for[index] += 1
        last_unit[member] = index
    ready = [i for i, count in enumerate(waits_for) if not count]
    ordered: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(index)
        for after in later[index]:
            waits_for[after] -= 1
            if not waits_for[after]:
                heapq.heappush(ready, after)
    if len(ordered) < len(units):
        LOG.error("transactions %s change each other's members in a cycle: applied by "
                  "first id", [units[i][0].transaction_id for i, n in enumerate(waits_for) if n])
        ordered += [i for i, n in enumerate(waits_for) if n]
    return [units[i] for i in ordered]


def _advanced(position: ImportPosition, consumed: set[int], final: set[Gap],
              config_id: int | None, now: float) -> ImportPosition:
    """The position after ``consumed`` ids: old gaps lose them (and the final ones go);
    ids skipped between the old and the new high-water id become new gaps."""
    done = sorted(consumed)
    gaps: list[Gap] = []
    for gap in position.gaps:
        if gap not in final:
            inside = done[bisect.bisect_left(done, gap.low):bisect.bisect_right(done, gap.high)]
            gaps += [dataclasses.replace(gap, low=lo, high=hi)
                     for lo, hi in _without(gap.low, gap.high, inside)]
    high = position.high
    above = done[bisect.bisect_right(done, high):] if high is not None else done
    if above:
        start = 1 if high is None else high + 1  # ids start at 1
        gaps += [Gap(lo, hi, round(now)) for lo, hi in _without(start, above[-1], above)]
        high = above[-1]
    return ImportPosition(high=high, gaps=tuple(sorted(gaps, key=lambda g: g.low)),
                          config_id=config_id)


def _without(low: int, high: int, taken: Sequence[int]) -> list[tuple[int, int]]:
    """The ranges of ``low``..``high`` left when the sorted ids ``taken`` are removed."""
    ranges: list[tuple[int, int]] = []
    for task_id in taken:
        if task_id > low:
            ranges.append((low, task_id - 1))
        low = task_id + 1
    if low <= high:
        ranges.append((low, high))
    return ranges


def _with_evidence(position: ImportPosition, evidence: str | None) -> ImportPosition:
    if evidence is None:
        return position
    return dataclasses.replace(position, gaps=tuple(
        g if g.evidence is not None else dataclasses.replace(g, evidence=evidence)
        for g in position.gaps))


def run(engine: Engine, nsdb: NSDB, nsdb_url: str, wakeup: Wakeup, stop: threading.Event,
        batch_size: int = 500, batch_window: float = 0.0) -> None:
    """Campaign for leadership; while leading, import until stopped or deposed
    (``batch_window``: ``[cluster] batch_window``)."""
    identifier = f"importer-{uuid.uuid4()}"
    metrics.importer().leader.set(0)  # a standby shows 0, not nothing
    while not stop.is_set():
        try:
            with election.leadership(nsdb_url, identifier, stop) as lost:
                if lost is None:
                    return
                metrics.importer().leader.set(1)
                importer = Importer(engine, nsdb, batch_size=batch_size)
                try:
                    _lead(importer, wakeup, stop, lost, batch_window)
                finally:
                    importer.release_reader()
                    metrics.importer().leader.set(0)
        except Exception as exc:  # e.g. ZooKeeper unreachable while campaigning
            LOG.warning("leader election failed (%s: %s); campaigning again",
                        type(exc).__name__, exc)
            stop.wait(1.0)


class Outage:
    """Retry pacing and logging for failed steps: once per state change, not per attempt."""

    def __init__(self, first: float = 0.05, longest: float = 5.0) -> None:
        self.first, self.longest = first, longest
        self.delay: float | None = None  # None: healthy
        self.since = 0.0

    def failed(self, exc: Exception) -> float:
        """Record a failure; returns how long to wait before the next attempt."""
        if self.delay is None:
            self.since = time.monotonic()
            self.delay = self.first
            LOG.warning("import stopped by an outage (%s: %s); retrying with backoff up to "
                        "%.0f s, logged again when it ends", type(exc).__name__, exc,
                        self.longest)
        else:
            self.delay = min(self.longest, self.delay * 2)
            LOG.debug("still failing: %s: %s", type(exc).__name__, exc)
        return self.delay

    def succeeded(self) -> None:
        if self.delay is not None:
            LOG.warning("import resumed after an outage of %.1f s",
                        time.monotonic() - self.since)
            self.delay = None


def _lead(importer: Importer, wakeup: Wakeup, stop: threading.Event,
          lost: threading.Event, batch_window: float = 0.0) -> None:
    """Import at every wake-up. After a catch-up that applied tasks, ``batch_window``
    passes before the next read: under a stream of commits each apply then carries what
    arrived meanwhile instead of one task (each apply is a read and an NSDB transaction,
    whatever its size), while a change arriving at an idle importer is read at once.

    The position is copied to ``last_processed_id`` every ``POSITION_COPY_INTERVAL`` while
    the importer is busy, and when it goes idle, but not sooner than that interval after
    the last copy: until then it waits as usual, for at most the rest of the interval. A
    stream of commits that pauses longer than the batch window (a loaded machine) would
    otherwise make every pause a copy, a write transaction of its own each."""
    synced = False
    outage = Outage()
    while not stop.is_set() and not lost.is_set():
        try:
            if not synced:
                importer.sync_position()
                synced = True
            applied = importer.catch_up(copy_position=False, keep_reader=True)
            if applied and batch_window:
                stop.wait(batch_window)
            copy_due_in = importer.position_copy_due_in()
            if not wakeup.pending:  # going idle
                importer.release_reader()
                if copy_due_in == 0.0:
                    importer.copy_position()
                    copy_due_in = None
        except Exception as exc:  # a database or NSDB outage: retry, never die
            synced = False
            importer.release_reader()
            stop.wait(outage.failed(exc))
            continue
        outage.succeeded()
        wakeup.wait(gaps_open=bool(importer.position.gaps), at_most=copy_due_in)
    if lost.is_set():
        LOG.warning("leadership lost; campaigning again")
