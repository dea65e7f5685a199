"""The network state database: one interface, a backend per URL scheme.

    store = nsdb.connect("sqlite:///var/nsdb.sqlite")
    store = nsdb.connect("zookeeper://cluster:secret@127.0.0.1:2181/midonet", role="cluster")

Callers never import a backend module; ``connect`` chooses it from the scheme, like tooz's
drivers. Options may also be given in the URL's query string (``?liveness_timeout=5``).
"""

from __future__ import annotations

import importlib
import urllib.parse

from midonet_membership.nsdb.base import (
    DEFAULT_TUNNEL_ZONE_NAME,
    NSDB,
    AddMember,
    Host,
    HostStatus,
    Interface,
    NSDBError,
    ObservedState,
    Op,
    PositionConflict,
    RemoveMember,
    SetTunnelZone,
    TunnelZone,
    Watch,
)

BACKENDS = {
    "sqlite": "midonet_membership.nsdb.sqlite:SQLiteNSDB",
    "zookeeper": "midonet_membership.nsdb.zookeeper:ZooKeeperNSDB",
}
_FLOAT_OPTIONS = ("liveness_timeout", "timeout", "watch_interval")

__all__ = ["DEFAULT_TUNNEL_ZONE_NAME", "NSDB", "AddMember", "Host", "HostStatus", "Interface",
           "NSDBError", "ObservedState", "Op", "PositionConflict", "RemoveMember",
           "SetTunnelZone", "TunnelZone", "Watch", "connect", "max_ops_per_apply"]


def max_ops_per_apply(url: str) -> int | None:
    """The most member changes one apply of this NSDB can hold (None: no limit); computed
    from the URL alone, so the API can enforce it without connecting."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "zookeeper":
        return None
    from midonet_membership.nsdb.zookeeper_wire import max_members_per_apply

    return max_members_per_apply(url.split("?", 1)[0], **dict(urllib.parse.parse_qsl(
        parts.query)))


def connect(url: str, **options: object) -> NSDB:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in BACKENDS:
        raise NSDBError(f"unsupported NSDB URL {url!r}: the scheme must be one of "
                        f"{', '.join(sorted(BACKENDS))}")
    for key, value in urllib.parse.parse_qsl(parts.query):
        options.setdefault(key, float(value) if key in _FLOAT_OPTIONS else value)
    module_name, _, class_name = BACKENDS[parts.scheme].partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    return backend(url.split("?", 1)[0], **options)
