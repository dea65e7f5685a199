"""Sizes on ZooKeeper's wire (jute), without kazoo: what one NSDB apply may carry.

The API imports this to refuse a bulk request the importer could not apply in one
ZooKeeper multi-op, without connecting to ZooKeeper or importing kazoo.
"""

from __future__ import annotations

import json
import urllib.parse

# ZooKeeper's default jute.maxbuffer (0xfffff): the largest request a server accepts (a larger
# one closes the connection). Override with ``?jute_maxbuffer=`` when the servers raise it.
DEFAULT_JUTE_MAXBUFFER = 0xFFFFF
# Kept free in every apply for its fixed parts: the position with the gaps it had before
# (the importer holds new tasks past base.HOLD_POSITION_BYTES of them), the delta's own
# keys, a zone change, headers. The gaps the apply's own tasks leave are counted per member
# (_WORST_GAP).
APPLY_RESERVE = 128 * 1024
_WORST_HOST = "ffffffff-ffff-ffff-ffff-ffffffffffff"
_WORST_IP = "223.255.255.255"  # the longest unicast tunnel endpoint
_OP_HEADER = 9  # a multi-op's per-op header: type (int), done (bool), error (int)
# The position's entry for a gap a member's task leaves before it (on Galera every task
# does: auto_increment_increment), written in the same apply: the largest ids, seen_at in
# whole seconds, an evidence token (ImportPosition.encode).
_WORST_GAP = len(json.dumps([2**63 - 1, 2**63 - 1, 2**34, "#99999"], separators=(",", ":"))) + 1


def max_members_per_apply(url: str, jute_maxbuffer: int | str = DEFAULT_JUTE_MAXBUFFER,
                          **_ignored: object) -> int:
    """How many member changes one multi-op can carry below ``jute.maxbuffer``.

    Computed from ZooKeeper's wire format (jute) for the costliest change: a new member (two
    creates with this identity's ACLs) or a re-addressed one (a delete and a create),
    whichever is larger, plus its entry in the published delta and a gap its task may
    leave in the position; so the API can refuse a larger bulk without connecting.
    ``test_bulk_limit`` checks the arithmetic against kazoo's own serializer and applies a
    bulk of exactly this size; ``test_galera`` applies one on Galera, a gap after every
    membership.
    """
    parts = urllib.parse.urlsplit(url)
    root = parts.path.rstrip("/") or "/midonet"
    acls = _acl_bytes(urllib.parse.unquote(parts.username or ""))
    member = f"{root}/tunnel_zone_members/{member_node(_WORST_HOST, _WORST_IP)}"
    data = json.dumps({"ip_address": _WORST_IP}).encode()
    new_member = (_create_bytes(f"{root}/tunnel_zone_member_hosts/{_WORST_HOST}", b"", acls)
                  + _create_bytes(member, data, acls))
    readdressed = _OP_HEADER + 4 + len(member) + 4 + _create_bytes(member, data, acls)
    in_delta = len(json.dumps({_WORST_HOST: _WORST_IP})) + 2  # '"id": "ip", '
    per_member = max(new_member, readdressed) + in_delta + _WORST_GAP
    return max(1, (int(jute_maxbuffer) - APPLY_RESERVE) // per_member)


def _create_bytes(path: str, data: bytes, acl_bytes: int) -> int:
    return _OP_HEADER + 4 + len(path.encode()) + 4 + len(data) + acl_bytes + 4  # + flags


def _acl_bytes(user: str) -> int:
    """The serialized ACL list of a node this identity creates."""
    if user:  # digest user:base64(sha1) (28 characters) with all rights, world read
        entries = [("digest", f"{user}:{'x' * 28}"), ("world", "anyone")]
    else:
        entries = [("world", "anyone")]
    return 4 + sum(4 + 4 + len(scheme) + 4 + len(ident.encode()) for scheme, ident in entries)


def member_node(host_id: str, ip_address: str) -> str:
    """A member's znode name: its tunnel IP is part of it (one get_children = the zone)."""
    return f"{host_id}@{ip_address}"
