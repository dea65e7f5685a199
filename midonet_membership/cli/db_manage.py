"""``midonet-db-manage``: migrations, the task journal and the tunnel zone, for operators.

The task commands mirror the original networking-midonet tool (``task-list [-u]``,
``task-clean``, ``task-resource [-p]``) and answer what an operator asks when the cluster
lags: which tasks has the importer not taken yet, what would it rebuild, what does the NSDB
hold now. Output goes through cliff's formatters like the ``neutron`` commands (``-f json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from cliff.columns import FormattableColumn
from cliff.command import Command
from cliff.lister import Lister
from cliff.show import ShowOne
from kazoo.exceptions import KazooException
from oslo_config import cfg
from sqlalchemy.engine import Engine

from midonet_membership import conf as config
from midonet_membership.cli.app import BaseApp, CommandError, column
from midonet_membership.db import engine as db_engine
from midonet_membership.db import journal, migration

TASK_COLUMNS = ("id", "type", "data_type", "resource_id", "transaction_id", "created_at",
                "requested_by", "project", "requested_from", "processed", "failed", "data")


def _decoded(text: str | None) -> Any:
    """Task data as a structure for json/yaml output; text that is not JSON stays text."""
    try:
        return column(json.loads(text)) if text else text
    except ValueError:
        return text


def redacted(url: str) -> str:
    """The URL to print: operators paste output into tickets, passwords must not follow."""
    return sa.make_url(url).render_as_string(hide_password=True)


class _DbCommand(Command):
    """Turns database failures into one line naming the (redacted) database."""

    needs_schema = True

    def run(self, parsed_args: argparse.Namespace) -> int:
        app: DbManageApp = self.app
        try:
            if self.needs_schema:
                app.require_schema()
            return super().run(parsed_args)
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise CommandError(f"database {redacted(app.database_url)}: {reason}") from None


class Upgrade(_DbCommand):
    """Upgrade the database schema (default: to every head); the all-in-one does it at start."""

    needs_schema = False

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("revision", nargs="?", default="heads",
                            help="target revision (default heads: the expand and the "
                                 "contract branch's; head means heads)")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> int:
        app: DbManageApp = self.app
        url = sa.make_url(app.database_url)
        if url.get_backend_name() == "sqlite" and url.database:
            os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
        before = migration.current_revision(app.engine)
        migration.upgrade(app.database_url, parsed.revision)
        after = migration.current_revision(app.engine)
        print(f"{redacted(app.database_url)}: "
              + (f"upgraded from {before} to {after}" if before != after
                 else f"already at {after}"), file=app.stdout)
        return 0


class Current(_DbCommand, ShowOne):
    """Show the schema's current and head revisions."""

    needs_schema = False

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, tuple]:
        app: DbManageApp = self.app
        app.require_database()
        return (("database", "current", "head"),
                (redacted(app.database_url), migration.current_revision(app.engine),
                 migration.head_revision(app.database_url)))


class TaskList(_DbCommand, Lister):
    """List the journal's tasks: who asked (user, project, client address), when, and
    whether the cluster has processed them."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("-u", "--unprocessed", action="store_true",
                            help="only the tasks the cluster has not processed yet")
        parser.add_argument("--failed", action="store_true",
                            help="only the tasks the cluster could not apply and skipped "
                                 "(the failed column says why)")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, list[tuple]]:
        engine = self.app.engine
        tasks, last = journal.list_tasks(engine, unprocessed=parsed.unprocessed)
        failures = journal.list_failures(engine)
        if parsed.failed:
            tasks = [t for t in tasks if t.id in failures]
        rows = [(t.id, t.type, t.data_type, t.resource_id, t.transaction_id,
                 t.created_at.isoformat(sep=" "), t.requested_by, t.tenant_id,
                 t.requested_from,
                 "yes" if last is not None and t.id <= last else "no",
                 failures.get(t.id, ""), _decoded(t.data)) for t in tasks]
        return TASK_COLUMNS, rows


class TaskClean(_DbCommand, ShowOne):
    """Delete the processed tasks and reset last_processed_id; unprocessed ones stay."""

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, tuple]:
        return ("deleted",), (journal.clean(self.app.engine),)


class TaskResource(_DbCommand, Lister):
    """The resources as the journal's tasks describe them (what the cluster would rebuild)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("-p", "--processed", action="store_true",
                            help="only from the tasks the cluster has processed")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, list[tuple]]:
        state = journal.resource_state(self.app.engine, processed_only=parsed.processed)
        rows = [(data_type, resource_id, column(data))
                for data_type, resources in sorted(state.items())
                for resource_id, data in sorted(resources.items())]
        return ("data_type", "resource_id", "data"), rows


class MembersColumn(FormattableColumn[dict[str, str]]):
    """Members one per line (``<host id> → <tunnel ip>``) in tables, a mapping in json/yaml."""

    def human_readable(self) -> str:
        return "\n".join(f"{host} → {ip}" for host, ip in sorted(self._value.items()))


class TunnelZoneShow(ShowOne):
    """Show the DEFAULT tunnel zone and its members (host id -> tunnel IP) from the NSDB."""

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, tuple]:
        from midonet_membership import nsdb

        url = config.nsdb_url(self.app.conf, "api")
        if url.startswith("sqlite:///") and not os.path.exists(url.removeprefix("sqlite:///")):
            raise CommandError(f"No NSDB at {url.removeprefix('sqlite:///')}: wrong "
                               "--state-dir or --config-file, or the cluster never ran")
        try:
            # role "agent": a reader must not create the cluster's ZooKeeper layout.
            with nsdb.connect(url, role="agent") as store:
                zone, members = store.get_tunnel_zone(), store.list_members()
        except nsdb.NSDBError as exc:
            raise CommandError(f"NSDB {redacted(url)}: {exc}") from None
        if zone is None:
            raise CommandError("The DEFAULT tunnel zone does not exist yet: the cluster has "
                               "not applied a CONFIG task (is the importer running?)")
        return (("id", "name", "type", "members"),
                (zone.id, zone.name, zone.type, MembersColumn(dict(sorted(members.items())))))


class Resync(_DbCommand, Lister):
    """Rebuild the DEFAULT zone from the memberships table and the newest CONFIG; list what
    changed (nothing when the NSDB already matched). When the NSDB has no zone and
    ``task-clean`` removed every CONFIG, the zone's type is ``[MIDONET] tunnel_protocol``.

    For a zone that drifted (an NSDB restored from an old backup, a task recorded as failed
    after a manual fix). It applies through the importer's compare-and-set on the position,
    so a running importer is not undone: if it applies meanwhile, resync reads again.
    """

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, list[tuple]]:
        from midonet_membership import nsdb

        url = config.nsdb_url(self.app.conf, "cluster")
        started = time.monotonic()
        try:
            with nsdb.connect(url, role="cluster") as store:
                changes = resync(self.app.engine, store, progress=_progress,
                                 protocol=self.app.conf.MIDONET.tunnel_protocol)
        except nsdb.NSDBError as exc:
            raise CommandError(f"NSDB {redacted(url)}: {exc}") from None
        if not changes:
            print("the NSDB already matches the memberships table: nothing changed",
                  file=sys.stderr)
        else:
            _progress(f"{len(changes)} change(s) applied in {time.monotonic() - started:.1f} s")
        return ("change", "id", "tunnel_ip_or_type"), changes


def _progress(text: str) -> None:
    """What a long command is doing, on stderr: the table on stdout stays parseable."""
    print(f"resync: {text}", file=sys.stderr, flush=True)


def resync(engine: Engine, store, progress: Callable[[str], None] = lambda _: None,
           protocol: str | None = None) -> list[tuple[str, str, str]]:
    """Make ``store``'s zone equal the memberships table; returns the changes made.

    ``protocol``: the zone's type when the NSDB has none and the journal no CONFIG any more
    (``task-clean`` removes processed tasks, CONFIG ones too, as the original did).

    ``progress`` is told each phase (reading, comparing, applying): with many thousands of
    members each takes a while, and a command must not sit silent meanwhile."""
    from midonet_membership.db.models import memberships
    from midonet_membership.nsdb.base import AddMember, PositionConflict, RemoveMember

    for attempt in range(20):
        if attempt:
            progress(f"the importer applied meanwhile; comparing again (attempt {attempt + 1})")
        progress("reading the NSDB zone and the memberships table")
        position = store.get_import_position()
        zone, members = store.get_tunnel_zone(), store.list_members()
        with db_engine.reader(engine) as conn:
            wanted = dict(conn.execute(sa.select(memberships.c.id,
                                                 memberships.c.ip_address)).all())
        progress(f"{len(wanted)} membership(s) in the Neutron DB, {len(members)} member(s) "
                 "in the NSDB zone")
        ops: list = []
        changes: list[tuple[str, str, str]] = []
        config = _newest_config(engine) or (_configured_zone(protocol) if zone is None
                                            else None)
        if config is not None and (zone is None or zone.type != config.zone.type):
            ops.append(config)
            changes.append(("zone", config.zone.id, config.zone.type))
        for host, ip in sorted(wanted.items()):
            if members.get(host) != ip:
                ops.append(AddMember(host, ip))
                changes.append(("added" if host not in members else "readdressed", host, ip))
        for host in sorted(set(members) - set(wanted)):
            ops.append(RemoveMember(host))
            changes.append(("removed", host, members[host]))
        if not ops:
            return []
        progress(f"applying {len(ops)} change(s) in one NSDB transaction")
        try:
            store.apply(ops, position, position)
        except PositionConflict:
            continue  # the importer applied meanwhile: look again
        return changes
    raise CommandError("the importer kept applying while resync compared; try again")


def _newest_config(engine: Engine):
    """The zone the newest CONFIG the importer accepts sets (``SetTunnelZone``), or None.
    A CONFIG it refused and recorded as failed, or would refuse, is passed over: resync
    must not write what the importer never would."""
    from midonet_membership.cluster import translators

    failed = journal.list_failures(engine)
    for task in reversed(journal.config_tasks(engine)):
        if task.id not in failed:
            try:
                [set_zone] = translators.translate_config(task)
            except translators.PoisonTask:
                continue
            return set_zone
    return None


def _configured_zone(protocol: str | None):
    from midonet_membership.nsdb.base import DEFAULT_TUNNEL_ZONE_NAME, SetTunnelZone, TunnelZone

    return None if protocol is None else SetTunnelZone(
        TunnelZone(journal.CONFIG_RESOURCE_ID, DEFAULT_TUNNEL_ZONE_NAME, protocol))


class NsdbInit(ShowOne):
    """Create the NSDB tree with the cluster identity's ACLs ([nsdb_cluster] credentials).

    The importer does the same when it starts; no other process creates any of it. Run it
    again to correct the ACLs of a tree made by an older version.
    """

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, tuple]:
        from midonet_membership import nsdb

        url = config.nsdb_url(self.app.conf, "cluster")
        try:
            with nsdb.connect(url, role="cluster") as store:
                nodes = getattr(store, "layout", lambda: [url])()
                owner = getattr(store, "user", "") or "anyone (no credentials: open ACLs)"
        except (nsdb.NSDBError, KazooException) as exc:
            raise CommandError(f"NSDB {redacted(url)}: {type(exc).__name__}: {exc}") from None
        return ("nsdb", "nodes", "owner"), (redacted(url), "\n".join(nodes), owner)


class NsdbHostAdd(ShowOne):
    """Provision a host: create its NSDB record, writable only by a new agent identity.

    Prints that identity's credentials once (only their digest is stored): put them in the
    host's agent configuration as ``[nsdb_agent] username/password``. Again for a host
    that exists: new credentials, the old ones stop working.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("host_id", help="the host's id (host_uuid in its "
                                            "midonet_host_id.properties)")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, tuple]:
        import secrets
        import uuid

        from midonet_membership import nsdb

        try:
            host_id = str(uuid.UUID(parsed.host_id))
        except ValueError:
            raise CommandError(f"{parsed.host_id!r} is not a host id (a UUID)") from None
        url = config.nsdb_url(self.app.conf, "cluster")
        if not url.startswith("zookeeper://"):
            raise CommandError("host provisioning is for a ZooKeeper NSDB with credentials; "
                               f"{redacted(url)} has no identities")
        password = secrets.token_urlsafe(24)
        try:
            with nsdb.connect(url, role="cluster") as store:
                store.provision_host(host_id, host_id, password)
        except (nsdb.NSDBError, KazooException) as exc:
            raise CommandError(f"NSDB {redacted(url)}: {type(exc).__name__}: {exc}") from None
        return (("host_id", "nsdb_agent_username", "nsdb_agent_password"),
                (host_id, host_id, password))


COMMANDS: dict[str, type[Command]] = {
    "upgrade": Upgrade, "current": Current, "task-list": TaskList, "task-clean": TaskClean,
    "task-resource": TaskResource, "tunnel-zone-show": TunnelZoneShow, "resync": Resync,
    "nsdb-init": NsdbInit, "nsdb-host-add": NsdbHostAdd,
}


class DbManageApp(BaseApp):
    """Reads neutron.conf like the server, so it finds the same databases."""

    def __init__(self) -> None:
        super().__init__("Manage the midonet-membership databases",
                         "midonet_membership.db_manage", COMMANDS)
        self._conf: cfg.ConfigOpts | None = None
        self._engine: Engine | None = None

    def build_option_parser(self, description: str, version: str,
                            argparse_kwargs: dict | None = None) -> argparse.ArgumentParser:
        parser = super().build_option_parser(description, version, argparse_kwargs)
        parser.add_argument("--config-file", action="append", default=[],
                            help="neutron.conf-style file (repeatable)")
        parser.add_argument("--state-dir", default=os.environ.get("MIDONET_STATE_DIR"),
                            help="state directory of the all-in-one (default "
                                 "$MIDONET_STATE_DIR, else the config's, else ./var)")
        return parser

    def configure_logging(self) -> None:
        super().configure_logging()
        if self.options.verbose_level < 2:  # alembic's INFO lines only with -v
            logging.getLogger("alembic").setLevel(logging.WARNING)

    @property
    def conf(self) -> cfg.ConfigOpts:
        """Loaded at the first command that needs it, so ``help`` works with a bad config."""
        if self._conf is None:
            conf = cfg.ConfigOpts()
            try:
                config.load([a for f in self.options.config_file
                             for a in ("--config-file", f)], conf)
            except (config.ConfigError, cfg.Error) as exc:
                raise CommandError(str(exc)) from None
            if self.options.state_dir:
                conf.set_override("state_dir", self.options.state_dir)
            self._conf = conf
        return self._conf

    @property
    def database_url(self) -> str:
        return config.database_url(self.conf)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            try:
                db_engine.check_url(self.database_url)
            except db_engine.DatabaseURLError as exc:
                raise CommandError(str(exc)) from None
            self._engine = db_engine.create_engine(self.database_url, pool_size=1)
        return self._engine

    def require_database(self) -> None:
        """A missing SQLite file is a wrong path, not an empty database: do not create it."""
        url = sa.make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
                and not os.path.exists(url.database):
            raise CommandError(f"No database at {url.database}: wrong --state-dir or "
                               "--config-file, or the server never ran")

    def require_schema(self) -> None:
        self.require_database()
        if migration.current_revision(self.engine) is None:
            raise CommandError(f"{redacted(self.database_url)} has no midonet-membership "
                               "tables yet: run `midonet-db-manage upgrade`")

    def clean_up(self, cmd: Command, result: int, err: BaseException | None) -> None:
        if self._engine is not None:
            self._engine.dispose()


def main(argv: list[str] | None = None) -> int:
    return DbManageApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
