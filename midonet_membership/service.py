"""``midonet-membership``: the processes of the deployment, one subcommand each.

``all-in-one`` is the README's first command: migrations, the CONFIG task, the API and
(from the cluster issue on) the importer on embedded SQLite, in one process.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable

import sqlalchemy as sa
from oslo_config import cfg

from midonet_membership import conf as config
from midonet_membership import stop_signal
from midonet_membership.context import new_request_id
from midonet_membership.db import engine as db_engine
from midonet_membership.db import journal, migration
from midonet_membership.nsdb.base import NSDBError

LOG = logging.getLogger("midonet_membership")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="midonet-membership", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("all-in-one", "API + importer + embedded NSDB in one process"),
                       ("api", "the API server (gunicorn workers)"),
                       ("importer", "the cluster importer (one of several may lead)"),
                       ("agent", "one MidoNet agent (kernel data plane in [agent] netns)"),
                       ("demo", "activation on the wire: 3 hosts and a rogue as network "
                                "namespaces (root; removes all it built)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config-file", action="append", default=[],
                       help="neutron.conf-style file (repeatable)")
        p.add_argument("--state-dir", help="state directory (default ./var)")
        if name in ("all-in-one", "api"):
            p.add_argument("--bind", metavar="HOST:PORT", type=_bind_address,
                           help="listen address (default 127.0.0.1:9696)")
        if name == "agent":
            p.add_argument("--dry-run", action="store_true",
                           help="record and log tunnel changes instead of building them")
        if name == "all-in-one":
            p.add_argument("--agents", type=int, default=0, metavar="N",
                           help="also start N local agents (state in STATE_DIR/agents/N)")
        if name == "api":
            p.add_argument("--workers", type=int, help="worker processes")
            p.add_argument("--threads", type=int, help="threads per worker")
    return parser


def _bind_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9696`` for IPv6); HOST may be empty (keep the configured one),
    port 0 asks for any free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not HOST:PORT with a port from 0 to 65535 (e.g. 127.0.0.1:9696)")
    return host.strip("[]"), int(port)


def _configure(args: argparse.Namespace) -> cfg.ConfigOpts:
    conf = cfg.CONF
    argv = [a for f in args.config_file for a in ("--config-file", f)]
    config.load(argv, conf)
    if args.state_dir:
        conf.set_override("state_dir", args.state_dir)
    if getattr(args, "bind", None):
        host, port = args.bind
        conf.set_override("bind_host", host or conf.bind_host)
        conf.set_override("bind_port", port)
    for option in ("workers", "threads"):
        if getattr(args, option, None):
            conf.set_override(f"api_{option}", getattr(args, option))
    os.makedirs(conf.state_dir, exist_ok=True)
    return conf


def prepare_database(conf: cfg.ConfigOpts, serving: bool = False):
    """Upgrade the schema, then write the CONFIG task if the protocol changed; the engine
    is ``serving`` if this process serves requests on it (``create_engine``)."""
    url = config.database_url(conf)
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=conf.api_threads, serving=serving)
    if journal.record_config(engine, conf.MIDONET.tunnel_protocol, new_request_id()):
        LOG.info("CONFIG task written: tunnel_protocol=%s", conf.MIDONET.tunnel_protocol)
    return engine


def all_in_one(conf: cfg.ConfigOpts, agent_count: int = 0) -> None:
    from prometheus_client import make_wsgi_app

    from midonet_membership import metrics
    from midonet_membership.api import make_app
    from midonet_membership.api.server import ThreadedServer, active_threads_default

    engine = prepare_database(conf, serving=True)
    api_nsdb = _api_nsdb(conf)
    metrics.register_probes({**metrics.database_probes(engine), **metrics.nsdb_probes(api_nsdb)},
                            {"process": "api"})
    app = make_app(conf, engine, api_nsdb, metrics_page=make_wsgi_app())
    server = ThreadedServer(app, conf.bind_host, conf.bind_port, conf.api_threads,
                            conf.api_active_threads or active_threads_default(engine.dialect.name))
    stop_importer = _start_importer(conf, engine, in_process=True)
    url = _endpoint_url(conf.bind_host, server.port)
    _write_endpoint(conf, url)
    server.start()
    banner = [f"midonet-membership all-in-one: console on {url}/",
              f"  API on {url}/v2.0/, Prometheus metrics on {url}/metrics"]
    if conf.auth_strategy == "token":
        banner.append(f"  admin token: {os.path.abspath(conf.admin_token_file)} "
                      "(the neutron CLI reads it)")
    banner.append(f"  Neutron DB: {_redacted(config.database_url(conf))}")
    banner.append(f"  NSDB: {_redacted(config.nsdb_url(conf))}")
    agents = [_local_agent(conf, i) for i in range(agent_count)]
    banner += [f"  agent {a.host_id} ({a.host.hostname}): {a.state.status}" for a in agents]
    banner.append("  Ctrl-C stops it.")
    # One write, so the log lines of the threads already running cannot split a line.
    sys.stdout.write("\n".join(banner) + "\n")
    sys.stdout.flush()
    stop_signal.wait()
    for a in agents:
        a.stop()
    server.stop()
    stop_importer()
    engine.dispose()
    LOG.info("stopped")


def _local_agent(conf: cfg.ConfigOpts, index: int):
    import socket

    from midonet_membership.agent import start_agent

    state_dir = os.path.join(conf.state_dir, "agents", str(index))
    return start_agent(conf, config.nsdb_url(conf, "agent"), state_dir,
                       hostname=f"{socket.gethostname()}-agent-{index}")


def agent(conf: cfg.ConfigOpts, dry_run: bool = False) -> None:
    from midonet_membership import metrics
    from midonet_membership.agent import run_agent

    metrics.serve(conf.metrics.agent_listen)
    run_agent(conf, conf.state_dir, dry_run)


def importer(conf: cfg.ConfigOpts) -> None:
    migration.upgrade(config.database_url(conf))
    engine = db_engine.create_engine(config.database_url(conf), pool_size=2)
    stop_importer = _start_importer(conf, engine, in_process=False)
    from midonet_membership import metrics

    metrics.register_probes(metrics.database_probes(engine), {"process": "importer"})
    metrics.serve(conf.metrics.importer_listen)
    print(f"midonet-membership importer: {_redacted(config.database_url(conf))} -> "
          f"{_redacted(config.nsdb_url(conf, 'cluster'))}", flush=True)
    stop_signal.wait()
    stop_importer()


def _start_importer(conf: cfg.ConfigOpts, engine, in_process: bool) -> Callable[[], None]:
    """The importer in a thread, woken by this process's commits or by LISTEN/poll;
    returns what stops it (at once, not at the next poll)."""
    from midonet_membership import metrics, nsdb
    from midonet_membership.cluster import importer as cluster
    from midonet_membership.cluster.wakeup import Wakeup

    url = config.nsdb_url(conf, "cluster")
    store = nsdb.connect(url, role="cluster")
    metrics.register_probes(metrics.nsdb_probes(store), {"process": "importer"})
    metrics.register_probes(metrics.importer_probes(engine, store))
    wakeup = Wakeup(conf.cluster.poll_interval)
    if in_process:
        wakeup.listen_in_process()
    wakeup.watch_database(config.database_url(conf))
    stop = threading.Event()

    def run() -> None:
        try:
            cluster.run(engine, store, url, wakeup, stop, batch_size=conf.cluster.batch_size,
                        batch_window=conf.cluster.batch_window)
        finally:
            wakeup.stop()
            store.close()
    thread = threading.Thread(target=run, name="importer", daemon=True)
    thread.start()

    def stop_importer() -> None:
        stop.set()
        wakeup.notify()
        thread.join(timeout=10)
    return stop_importer


def api(conf: cfg.ConfigOpts) -> None:
    from midonet_membership import metrics
    from midonet_membership.api import make_app
    from midonet_membership.api.server import serve_workers

    engine = prepare_database(conf)
    if conf.metrics.api_listen:
        registry = metrics.multiprocess_registry()
        master_nsdb = _api_nsdb(conf)
        metrics.register_probes({**metrics.database_probes(engine),
                                 **metrics.nsdb_probes(master_nsdb)}, {"process": "api"},
                                registry)
        metrics.serve(conf.metrics.api_listen, registry)
    engine.dispose()  # no pooled connection may be inherited by the forked workers
    if conf.auth_strategy == "token":  # before the port opens, so clients can read it
        from midonet_membership.api.auth import ensure_admin_token
        ensure_admin_token(conf.admin_token_file)
    _write_endpoint(conf, _endpoint_url(conf.bind_host, conf.bind_port))

    def app_factory():
        engine = db_engine.create_engine(config.database_url(conf), pool_size=conf.api_threads,
                                         serving=True)
        return make_app(conf, engine, _api_nsdb(conf))
    serve_workers(app_factory, conf.bind_host, conf.bind_port, conf.api_workers,
                  conf.api_threads)


def _api_nsdb(conf: cfg.ConfigOpts):
    """The API's NSDB connection, under the API's own identity (none needed: it only reads),
    never the cluster's; it starts without ZooKeeper, and the agents API answers 503 until
    ZooKeeper is back."""
    from midonet_membership import nsdb

    return nsdb.connect(config.nsdb_url(conf, "api"), role="api",
                        liveness_timeout=conf.agent.liveness_timeout)


def _api_metrics_wanted(args: argparse.Namespace) -> bool:
    """Whether ``[metrics] api_listen`` is set; a bad configuration is reported later, by
    the same parse inside ``main``'s error handling."""
    try:
        return bool(_configure(args).metrics.api_listen)
    except Exception:
        return False


def _collect_worker_metrics() -> None:
    """``api`` with ``[metrics] api_listen``: each gunicorn worker writes its samples to a
    fresh directory, and the master serves them all there (prometheus_client's multiprocess
    mode; without a listen address the workers' samples stay in memory, unserved, and cost
    no file writes).

    prometheus_client reads the variable when it is first imported, so this runs before
    anything imports it; a later import would silently lose every worker's samples.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the API's metrics "
                           "directory was set; the workers' metrics would be lost")
    path = tempfile.mkdtemp(prefix="midonet-api-metrics-")
    master = os.getpid()

    def remove() -> None:  # forked workers inherit the hook: only the master removes it
        if os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)
    atexit.register(remove)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def _endpoint_url(host: str, port: int) -> str:
    """The API's URL for a local client: an IPv6 address goes in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _write_endpoint(conf: cfg.ConfigOpts, url: str) -> None:
    """Tell a local CLI where the API is (it also reads the admin token from there)."""
    with open(os.path.join(conf.state_dir, "api-url"), "w") as f:
        f.write(url + "\n")


def _redacted(url: str) -> str:
    """The URL without its password (ZooKeeper URLs name several hosts: no URL parser)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _nsdb_errors() -> tuple[type[BaseException], ...]:
    """The NSDB's errors, kazoo's only if it was loaded: a process on the SQLite NSDB (the
    all-in-one, an API worker) never imports kazoo, so none of its errors can occur."""
    kazoo = sys.modules.get("kazoo.exceptions")
    return (NSDBError, kazoo.KazooException) if kazoo else (NSDBError,)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from midonet_membership.demo import run_demo
        return run_demo()
    if args.command == "api" and _api_metrics_wanted(args):
        _collect_worker_metrics()
    # Only now: the agent package imports prometheus_client.
    from midonet_membership.agent.dataplane import DataPlaneError
    from midonet_membership.agent.identity import HostIdError

    try:
        conf = _configure(args)
        if args.command in ("all-in-one", "api", "importer"):
            db_engine.check_url(config.database_url(conf))
        if args.command == "all-in-one":
            all_in_one(conf, args.agents)
        elif args.command == "agent":
            agent(conf, args.dry_run)
        else:
            {"api": api, "importer": importer}[args.command](conf)
    except (config.ConfigError, db_engine.DatabaseURLError) as exc:
        print(f"midonet-membership: {exc}", file=sys.stderr)
        return 2
    except sa.exc.OperationalError as exc:  # at start: migrations, the CONFIG task
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        print(f"midonet-membership: cannot use the database "
              f"{_redacted(config.database_url(cfg.CONF))}: {reason} (is it running, and is "
              "[database] connection right?)", file=sys.stderr)
        return 1
    except (HostIdError, DataPlaneError) as exc:
        print(f"midonet-membership: {exc}", file=sys.stderr)
        return 2
    except _nsdb_errors() as exc:
        print(f"midonet-membership: the NSDB is unreachable or refused us: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"midonet-membership: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
