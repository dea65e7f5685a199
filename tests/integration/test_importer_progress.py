"""The importer says how its catch-up goes while it is behind, and stays quiet otherwise."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import subprocess
import sys

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from midonet_membership import metrics, nsdb
from midonet_membership.cluster import importer as cluster
from midonet_membership.db import engine as db_engine
from midonet_membership.db import journal, migration
from midonet_membership.db.models import memberships, tasks


def _journal_with(url: str, count: int, age: datetime.timedelta) -> sa.Engine:
    """A CONFIG task and ``count`` memberships, written ``age`` ago (as after downtime)."""
    migration.upgrade(url)
    engine = db_engine.create_engine(url)
    journal.record_config(engine, "vxlan", "req-config")
    created = journal.utcnow() - age
    with engine.begin() as conn:
        conn.execute(sa.insert(tasks), [{
            "type": journal.CREATE, "data_type": journal.AGENTMEMBERSHIP,
            "resource_id": f"00000000-0000-4000-8000-{n:012d}",
            "data": f'{{"id": "00000000-0000-4000-8000-{n:012d}", '
                    f'"ip_address": "198.18.{n // 250}.{n % 250 + 1}"}}',
            "transaction_id": f"req-{n}", "created_at": created} for n in range(count)])
    return engine


def test_catch_up_progress_is_logged_while_behind(make_database, tmp_path, caplog,
                                                  monkeypatch):
    monkeypatch.setattr(cluster, "PROGRESS_INTERVAL", 0.0)  # every batch, for the test
    engine = _journal_with(make_database("sqlite"), 1000, datetime.timedelta(minutes=5))
    with nsdb.connect(f"sqlite:///{tmp_path}/nsdb.sqlite", role="cluster") as store, \
            caplog.at_level(logging.INFO, logger=cluster.__name__):
        importer = cluster.Importer(engine, store, batch_size=100)
        importer.sync_position()
        assert importer.catch_up() == 1001
    lines = [r.getMessage() for r in caplog.records]
    progress = [re.match(r"importer catching up: (\d+) tasks applied in \d+ s "
                         r"\(\d+ tasks/s\), (\d+) to go, (\d+) s behind", line)
                for line in lines if line.startswith("importer catching up")]
    assert progress and all(progress), lines
    done = [(int(m[1]), int(m[2])) for m in progress]
    assert all(a + b == 1001 for a, b in done), done  # done + to go = the whole backlog
    assert [a for a, _ in done] == sorted(a for a, _ in done)
    assert all(int(m[3]) >= 290 for m in progress)  # five minutes behind
    assert re.fullmatch(r"importer caught up: 1001 tasks applied in [\d.]+ s "
                        r"\(\d+ tasks/s\)", lines[-1])


def test_no_progress_lines_when_not_behind(make_database, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(cluster, "PROGRESS_INTERVAL", 0.0)
    engine = _journal_with(make_database("sqlite"), 300, datetime.timedelta(0))
    with nsdb.connect(f"sqlite:///{tmp_path}/nsdb.sqlite", role="cluster") as store, \
            caplog.at_level(logging.INFO, logger=cluster.__name__):
        importer = cluster.Importer(engine, store, batch_size=100)
        importer.sync_position()
        assert importer.catch_up() == 301
    assert not [r for r in caplog.records if "catching up" in r.getMessage()
                or "caught up" in r.getMessage()]


def test_resync_says_what_it_is_doing_on_stderr(make_database, tmp_path):
    """Each phase on stderr (the table stays alone on stdout, parseable)."""
    url = make_database("sqlite")
    engine = _journal_with(url, 300, datetime.timedelta(0))  # 300 memberships' tasks...
    with engine.begin() as conn:  # ...and their rows, never imported: the NSDB is empty
        conn.execute(sa.insert(memberships), [
            {"id": f"00000000-0000-4000-8000-{n:012d}",
             "ip_address": f"198.18.{n // 250}.{n % 250 + 1}"} for n in range(300)])
    nsdb_url = f"sqlite:///{tmp_path}/nsdb.sqlite"
    with nsdb.connect(nsdb_url, role="cluster") as store:
        store.apply([], None, None)  # the tree exists, nothing in it
    config = tmp_path / "manage.conf"
    config.write_text(f"[database]\nconnection = {url}\n[nsdb]\nconnection = {nsdb_url}\n")
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "midonet-db-manage"),
                           "--config-file", str(config), "resync", "-f", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 301  # the zone and 300 members
    lines = [line for line in done.stderr.splitlines() if line.startswith("resync: ")]
    assert lines[0] == "resync: reading the NSDB zone and the memberships table"
    assert lines[1] == ("resync: 300 membership(s) in the Neutron DB, 0 member(s) in the "
                        "NSDB zone")
    assert lines[2] == "resync: applying 301 change(s) in one NSDB transaction"
    assert re.fullmatch(r"resync: 301 change\(s\) applied in [\d.]+ s", lines[3])


class _CountedReads:
    """The NSDB, counting reads of the import position (up to ~110 KiB each)."""

    def __init__(self, store) -> None:
        self.store, self.position_reads = store, 0

    def get_import_position(self):
        self.position_reads += 1
        return self.store.get_import_position()


def test_a_scrape_reads_the_import_position_once(make_database, tmp_path):
    engine = _journal_with(make_database("sqlite"), 300, datetime.timedelta(minutes=5))
    with nsdb.connect(f"sqlite:///{tmp_path}/nsdb.sqlite", role="cluster") as store:
        importer = cluster.Importer(engine, store, batch_size=100)
        importer.sync_position()
        importer.step()
        counted = _CountedReads(store)
        registry = CollectorRegistry()
        metrics.register_probes(metrics.importer_probes(engine, counted), registry=registry)
        scraped = {s.name: s.value for family in registry.collect() for s in family.samples}
    assert counted.position_reads == 1
    assert scraped["midonet_importer_lag_tasks"] == 201  # of 301, one step of 100 applied
    assert 290 <= scraped["midonet_importer_lag_seconds"] < 400
    assert scraped["midonet_importer_open_gaps"] == 0
