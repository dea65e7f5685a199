"""Every option of midonet-membership, registered once.

The groups follow neutron.conf so that an operator's existing file works: ``[MIDONET]``
carries ``tunnel_protocol`` exactly as the spec names it, ``[database] connection`` is
Neutron's. ``list_opts()`` feeds ``oslo-config-generator`` (``make sample-config``).
"""

from __future__ import annotations

import os
import re
import urllib.parse

from oslo_config import cfg

TUNNEL_PROTOCOLS = ("vxlan", "gre")

DEFAULT_OPTS = [
    cfg.StrOpt("state_dir", default="var",
               help="Directory for the embedded databases, the generated admin token and "
                    "the agents' state of the all-in-one."),
    cfg.HostAddressOpt("bind_host", default="127.0.0.1",
                       help="Address the API server listens on."),
    cfg.PortOpt("bind_port", default=9696, help="Port the API server listens on."),
    cfg.StrOpt("auth_strategy", default="token", choices=[
        ("token", "a generated admin token stored 0600 in the state directory"),
        ("keystone", "Keystone tokens validated by keystonemiddleware (production)"),
        ("noauth", "trust X-Roles/X-Project-Id headers; loopback binds only"),
    ], help="How API requests are authenticated."),
    cfg.StrOpt("admin_token_file", default="$state_dir/admin-token",
               help="The generated admin token of auth_strategy=token. Created 0600 with "
                    "O_EXCL|O_NOFOLLOW when missing; a symlink, a file another user owns "
                    "or one others may read stops start-up. The neutron CLI reads it "
                    "(--admin-token-file, or this option through --config-file)."),
    cfg.IntOpt("api_workers", default=1, min=1,
               help="API worker processes (gunicorn) for `midonet-membership api`."),
    cfg.IntOpt("api_threads", default=16, min=1, help="Request threads per API worker."),
    cfg.IntOpt("api_active_threads", min=1,
               help="Of the all-in-one's api_threads, how many serve requests at once while "
                    "requests keep moving: more wait, each taken by a thread as it finishes "
                    "the one before. A request that waited 20 ms takes another thread anyway "
                    "(up to api_threads), so slow clients cannot stall the rest. One process "
                    "runs one thread's Python at a time: more threads at once only take "
                    "turns at it. Unset: 1 on SQLite, which works inside this process; 2 on "
                    "a database server, whose round trips a second thread fills (raise it "
                    "when that server is remote)."),
    cfg.StrOpt("network_link_prefix",
               help="Base URL written into pagination links instead of the request's own "
                    "(set it behind a proxy)."),
    cfg.IntOpt("pagination_max_limit", default=-1,
               help="Largest page a list returns; -1 means no limit (Neutron's default)."),
]

MIDONET_OPTS = [
    cfg.StrOpt("tunnel_protocol", default="vxlan", choices=[
        ("vxlan", "VXLAN over UDP 4789 (works on every kernel seen here)"),
        ("gre", "GRE (needs the ip_gre/gretap kernel modules on every host)"),
    ],
               help="Tunnel protocol of the DEFAULT tunnel zone, sent to the cluster in the "
                    "CONFIG task at start-up."),
]

DATABASE_OPTS = [
    cfg.StrOpt("connection", secret=True,
               help="SQLAlchemy URL of the Neutron database; defaults to "
                    "sqlite:///$state_dir/neutron.sqlite."),
]

NSDB_OPTS = [
    cfg.StrOpt("connection", secret=True,
               help="URL of the network state database: sqlite:///PATH or "
                    "zookeeper://[user:password@]host:port[,...]/root; defaults to "
                    "sqlite:///$state_dir/nsdb.sqlite."),
]

CLUSTER_OPTS = [
    cfg.FloatOpt("poll_interval", default=0.02, min=0.001,
                 help="Seconds between journal polls when no notification arrives "
                      "(PostgreSQL LISTEN/NOTIFY and the all-in-one wake the importer "
                      "at once). On SQLite a poll reads the journal only when another "
                      "connection committed (PRAGMA data_version); while PostgreSQL's "
                      "LISTEN connection is up, and on SQLite when nothing was committed, "
                      "the journal is read once a second besides, as a safety net (every "
                      "poll reads it while rolled-back task ids are still to be settled)."),
    cfg.FloatOpt("gap_timeout", default=5.0, min=0, deprecated_for_removal=True,
                 deprecated_reason="The importer no longer waits for a missing task id, "
                                   "and never gives one up on a timeout: the database "
                                   "tells it when an id gap is final.",
                 help="Ignored."),
    cfg.IntOpt("batch_size", default=500, min=1,
               help="Most tasks applied to the NSDB in one atomic transaction."),
    cfg.FloatOpt("batch_window", default=0.005, min=0, max=1.0,
                 help="Seconds the importer lets pass after applying tasks before it reads "
                      "again, so that a stream of commits is applied in batches rather than "
                      "one NSDB transaction per task (in the all-in-one that work shares a "
                      "process with the API). A change that arrives while the importer is "
                      "idle is applied at once; 0 reads again at once."),
]

AGENT_OPTS = [
    cfg.StrOpt("host_id_file", default="$state_dir/midonet_host_id.properties",
               help="Where the agent keeps its host id (host_uuid=<uuid>), generated on first "
                    "start; MidoNet's own agents use /etc/midonet_host_id.properties."),
    cfg.FloatOpt("heartbeat_interval", default=1.0, min=0.05,
                 help="Seconds between the agent's liveness heartbeats."),
    cfg.FloatOpt("liveness_timeout", default=5.0, min=0.1,
                 help="An agent without a heartbeat for this long is shown alive=False. "
                      "On ZooKeeper it is the agent's session timeout, after which a killed "
                      "agent's ephemeral liveness node disappears (the server bounds it to "
                      "2-20 tickTimes)."),
    cfg.FloatOpt("interface_scan_interval", default=10.0, min=0.05,
                 help="Seconds between the agent's reads of its host's interfaces; a change "
                      "(an address added for the tunnel endpoint) is registered at once, so "
                      "the agents API shows it."),
    cfg.FloatOpt("reconcile_interval", default=2.0, min=0.05,
                 help="Seconds between the agent's periodic reconciles: the data plane is "
                      "compared with the zone and repaired (a device, FDB entry or nftables "
                      "table removed by hand comes back) and the admission drop counter is "
                      "read and reported."),
    cfg.StrOpt("netns", default="",
               help="Network namespace (a name under /run/netns) the kernel data plane "
                    "builds in, while the agent keeps its NSDB connection where it runs. "
                    "Empty: the agent's own namespace."),
    cfg.BoolOpt("allow_root_namespace", default=False,
                help="Let the kernel data plane build in the machine's root network "
                     "namespace. Off, it refuses to start there, so a test or a demo can "
                     "never add a VXLAN device, FDB entry or nftables table to the real "
                     "network; turn it on for a real hypervisor."),
    cfg.IntOpt("vni", default=1, min=1, max=16777215,
               help="VXLAN network identifier of the tunnel device."),
    cfg.IntOpt("tunnel_mtu", min=68, max=65535,
               help="MTU of the tunnel device; unset, the kernel derives it from the "
                    "underlay device (its MTU minus the 50 bytes of VXLAN headers)."),
    cfg.StrOpt("tunnel_device", default="mm-vxlan0",
               help="Name of the tunnel device the kernel data plane owns."),
    cfg.StrOpt("overlay_address",
               help="Address/prefix put on the tunnel device (e.g. 192.0.2.1/24), so the "
                    "overlay can be pinged; the test hosts and the demo set it."),
]


AUDIT_MAP_FILE = os.path.join(os.path.dirname(__file__), "api", "api_audit_map.conf")

AUDIT_OPTS = [
    cfg.BoolOpt("enabled", default=False,
                help="Emit a CADF event for each API request through keystonemiddleware's "
                     "audit middleware (auth_strategy = keystone only: the event's "
                     "initiator comes from the validated token). Events go to oslo.messaging "
                     "when it is installed and [audit_middleware_notifications] "
                     "use_oslo_messaging is set, else to the log (logger "
                     "midonet_membership.audit)."),
    cfg.StrOpt("audit_map_file", default=AUDIT_MAP_FILE,
               sample_default="<midonet_membership package>/api/api_audit_map.conf",
               help="keystonemiddleware's audit map (path keywords, service type); the "
                    "default is the one shipped for this API."),
    cfg.StrOpt("ignore_req_list", default="GET,HEAD",
               help="HTTP methods not audited (comma-separated); empty audits reads too."),
]

METRICS_OPTS = [
    cfg.StrOpt("api_listen",
               help="HOST:PORT where `midonet-membership api` serves Prometheus metrics at "
                    "/metrics (all its workers' samples together); unset: not served. The "
                    "all-in-one serves every part's metrics at /metrics on its API port."),
    cfg.StrOpt("importer_listen",
               help="HOST:PORT where `midonet-membership importer` serves Prometheus "
                    "metrics at /metrics; unset: not served."),
    cfg.StrOpt("agent_listen",
               help="HOST:PORT where `midonet-membership agent` serves Prometheus metrics "
                    "at /metrics; unset: not served."),
]


NSDB_IDENTITIES = {
    "cluster": "the importer, `midonet-db-manage nsdb-init` and `nsdb-host-add`: creates "
               "the tree and alone writes the zone, the members and the position. Keep it "
               "in a file only the cluster nodes read",
    "agent": "one agent: writes only its own host record (provisioned for this identity "
             "by `midonet-db-manage nsdb-host-add`)",
    "api": "the API workers: read-only; may stay unset (the tree is world-readable)",
}


def _identity_opts(identity: str, who: str) -> list[cfg.Opt]:
    return [
        cfg.StrOpt("username", help=f"ZooKeeper digest user of the {identity} identity "
                                    f"({who}). Unset: the credentials of [nsdb] connection, "
                                    "if any."),
        cfg.StrOpt("password", secret=True, help=f"Password of the {identity} identity."),
    ]


def register_opts(conf: cfg.ConfigOpts = cfg.CONF) -> None:
    conf.register_opts(DEFAULT_OPTS)
    conf.register_opts(MIDONET_OPTS, group="MIDONET")
    conf.register_opts(DATABASE_OPTS, group="database")
    conf.register_opts(NSDB_OPTS, group="nsdb")
    conf.register_opts(CLUSTER_OPTS, group="cluster")
    conf.register_opts(AGENT_OPTS, group="agent")
    conf.register_opts(AUDIT_OPTS, group="audit")
    conf.register_opts(METRICS_OPTS, group="metrics")
    for identity, who in NSDB_IDENTITIES.items():
        conf.register_opts(_identity_opts(identity, who), group=f"nsdb_{identity}")


def list_opts() -> list[tuple[str | None, list[cfg.Opt]]]:
    return [
        (None, DEFAULT_OPTS),
        ("MIDONET", MIDONET_OPTS),
        ("database", DATABASE_OPTS),
        ("nsdb", NSDB_OPTS),
        ("cluster", CLUSTER_OPTS),
        ("agent", AGENT_OPTS),
        ("audit", AUDIT_OPTS),
        ("metrics", METRICS_OPTS),
        *((f"nsdb_{identity}", _identity_opts(identity, who))
          for identity, who in NSDB_IDENTITIES.items()),
    ]


def database_url(conf: cfg.ConfigOpts = cfg.CONF) -> str:
    return conf.database.connection or _sqlite_in_state_dir(conf, "neutron.sqlite")


def nsdb_url(conf: cfg.ConfigOpts = cfg.CONF, identity: str | None = None) -> str:
    """The NSDB URL, with ``[nsdb_<identity>]``'s credentials when that section sets them.

    ``[nsdb] connection`` names the servers and the root and may carry no secret at all,
    so a neutron.conf shared by every API worker holds no cluster password; each process
    adds its own identity's section (a separate ``--config-file``). Credentials written in
    the URL itself are used when the identity's section is empty.
    """
    url = conf.nsdb.connection or _sqlite_in_state_dir(conf, "nsdb.sqlite")
    if identity is None or not url.startswith("zookeeper://"):
        return url
    section = conf[f"nsdb_{identity}"]
    if not section.username:
        return url
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    hosts = netloc.rpartition("@")[2]
    credentials = (urllib.parse.quote(section.username, safe="") + ":"
                   + urllib.parse.quote(section.password or "", safe=""))
    return f"{scheme}://{credentials}@{hosts}{slash}{path}"


def _sqlite_in_state_dir(conf: cfg.ConfigOpts, name: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(conf.state_dir), name)


class ConfigError(Exception):
    """A configuration value that stops start-up; the message says which and why."""


def load(argv: list[str] | None = None, conf: cfg.ConfigOpts = cfg.CONF,
         default_config_files: list[str] | None = None) -> cfg.ConfigOpts:
    """Parse the command line and config files, and validate every value now.

    oslo.config checks ``choices`` only when an option is read, so a bad
    ``tunnel_protocol`` would otherwise surface deep inside the first request.
    """
    register_opts(conf)
    conf(argv or [], project="neutron", prog="midonet-membership",
         default_config_files=default_config_files or [], validate_default_values=True)
    for group, opts in list_opts():
        for opt in opts:
            try:
                conf[group][opt.dest] if group else conf[opt.dest]
            except (cfg.ConfigFileValueError, ValueError) as exc:
                where = f"[{group or 'DEFAULT'}] {opt.name}"
                reason = re.sub(r" from LocationInfo\(.*?\)", "", str(exc))
                raise ConfigError(f"invalid value for {where}: {reason}") from None
    return conf
