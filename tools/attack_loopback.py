#!/usr/bin/env python3
"""An attacker on loopback with no credentials, against a running deployment.

    tools/attack_loopback.py --api http://127.0.0.1:9696 \
        --zookeeper 127.0.0.1:2181/midonet [--seed 1] [--fuzz 300]

It tries every write path of the threat model (README, "Threat model") without the
credentials that allow it, then a bounded raw-HTTP fuzz of the API (malformed request
lines, huge and numerous headers, lying Content-Length, chunked garbage, slow and abandoned
bodies, oversized bodies), and prints one JSON report. It exits 1 when any answer was a 5xx
(other than 501/505, the statuses HTTP prescribes for a method or version the server does
not implement), when any NSDB write went through, when the zone or the hosts changed, or
when the API stopped answering; 0 otherwise. Only 127.0.0.1 is ever contacted; every loop
is bounded in count and time, and it stops by itself.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import threading
import time
import urllib.parse
import uuid

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoAuthError, NoNodeError
from kazoo.security import OPEN_ACL_UNSAFE

PATH = "/v2.0/agent-memberships"
TIMEOUT = 10.0
PROTOCOL_5XX = (501, 505)


# -- the NSDB ------------------------------------------------------------------------------------

def snapshot(client: KazooClient, root: str) -> dict[str, bytes]:
    """Every node under ``root`` with its data: what must not change."""
    nodes: dict[str, bytes] = {}

    def walk(path: str) -> None:
        try:
            nodes[path] = client.get(path)[0]
            for child in client.get_children(path):
                if path.endswith("/alive") or child == "alive":  # liveness beats move
                    continue
                walk(f"{path}/{child}")
        except NoNodeError:
            pass
    walk(root)
    return {p: d for p, d in nodes.items() if not p.endswith("/alive")}


def _attempts(c: KazooClient, root: str) -> dict:
    """What to try, by name; ``victim`` is a provisioned host when there is one."""
    hosts_path = f"{root}/hosts"
    try:
        known = sorted(c.get_children(hosts_path))
    except NoNodeError:
        known = []
    victim = f"{hosts_path}/{known[0] if known else uuid.uuid4()}"
    return {
        "write the zone": lambda: c.set(
            f"{root}/tunnel_zone", b'{"id": "x", "name": "DEFAULT", "type": "gre"}'),
        "write the position": lambda: c.set(f"{root}/importer/position", b"999999"),
        "forge a members delta": lambda: c.set(
            f"{root}/tunnel_zone_members", b'{"added": {"x": "203.0.113.9"}}'),
        "add itself as a member": lambda: c.create(
            f"{root}/tunnel_zone_members/{uuid.uuid4()}@203.0.113.9", b"{}"),
        "flag itself a member host": lambda: c.create(
            f"{root}/tunnel_zone_member_hosts/{uuid.uuid4()}", b""),
        "squat a new host id": lambda: c.create(f"{hosts_path}/{uuid.uuid4()}", b"{}"),
        "squat a provisioned host id": lambda: c.create(victim, b"{}"),
        "rewrite another host's record": lambda: c.set(
            victim, b'{"id": "x", "hostname": "evil"}'),
        "fake another host's liveness": lambda: c.create(f"{victim}/alive", b"now",
                                                         ephemeral=True),
        "delete another host's record": lambda: c.delete(victim, recursive=True),
        "open the root's ACL": lambda: c.set_acls(root, OPEN_ACL_UNSAFE),
        "take the leader lock": lambda: c.create(
            f"{root}/importer/election/evil-lock-", b"", ephemeral=True, sequence=True),
        "delete the tree": lambda: c.delete(root, recursive=True),
    }


def nsdb_attacks(hosts: str, root: str) -> dict:
    """Each write an agent-less, credential-less (or forged-credential) client might try."""
    results: dict[str, str] = {}
    for who, auth in (("anonymous", None), ("forged-cluster", [("digest", "cluster:guess")]),
                      ("forged-agent", [("digest", "agent:guess")])):
        client = KazooClient(hosts, auth_data=auth)
        client.start(timeout=TIMEOUT)
        try:
            attempts = _attempts(client, root)
            for what, attempt in attempts.items():
                try:
                    attempt()
                    results[f"{who}: {what}"] = "ALLOWED"
                except NoAuthError:
                    results[f"{who}: {what}"] = "refused"
                except KazooException as exc:  # e.g. NodeExists: refused all the same
                    results[f"{who}: {what}"] = f"refused ({type(exc).__name__})"
        finally:
            client.stop()
            client.close()
    return results


# -- HTTP ----------------------------------------------------------------------------------------

def exchange(port: int, data: bytes, pause: float = 0.0, rest: bytes = b"",
             read: bool = True) -> int | None:
    """Send raw bytes (``rest`` after ``pause``), read one answer; its status or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(data)
            if pause:
                time.sleep(pause)
            if rest:
                sock.sendall(rest)
            if not read:
                return None
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    try:
        return int(reply.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def crafted_requests(host: str, token: str) -> list[tuple[str, bytes, float, bytes]]:
    """(name, first bytes, pause, rest) of each hand-made malformed request."""
    body = json.dumps({"agent_membership": {"id": str(uuid.uuid4()),
                                            "ip_address": "203.0.113.10"}}).encode()
    auth = f"X-Auth-Token: {token}\r\n" if token else ""
    head = f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
    return [
        ("no token", f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Length: "
                     f"{len(body)}\r\n\r\n".encode() + body, 0, b""),
        ("forged token", f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nX-Auth-Token: "
                         f"{'0' * 64}\r\n\r\n".encode(), 0, b""),
        ("noauth-style roles header", f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\n"
                                      f"X-Roles: admin\r\nX-Identity-Status: Confirmed\r\n"
                                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body,
         0, b""),
        ("garbage request line", b"\x00\xff\xfe garbage\r\n\r\n", 0, b""),
        ("HTTP/0.9", f"GET {PATH}\r\n".encode(), 0, b""),
        ("unknown version", f"GET {PATH} HTTP/7.0\r\nHost: x\r\n\r\n".encode(), 0, b""),
        ("absolute URI elsewhere", b"GET http://203.0.113.1/ HTTP/1.1\r\nHost: x\r\n\r\n",
         0, b""),
        ("huge header", f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nX-Big: ".encode()
         + b"a" * 200_000 + b"\r\n\r\n", 0, b""),
        ("many headers", f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\n".encode()
         + b"".join(b"X-H%d: v\r\n" % i for i in range(5000)) + b"\r\n", 0, b""),
        ("huge URL", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 0, b""),
        ("NUL in path", b"GET /v2.0/agent-memberships/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
         0, b""),
        ("path traversal", f"GET /v2.0/../../../etc/passwd HTTP/1.1\r\nHost: x\r\n{auth}"
                           "\r\n".encode(), 0, b""),
        ("negative Content-Length", (head + "Content-Length: -1\r\n\r\n").encode() + body,
         0, b""),
        ("two Content-Lengths", (head + "Content-Length: 5\r\nContent-Length: 500\r\n\r\n"
                                 ).encode() + body, 0, b""),
        ("Content-Length overflow", (head + "Content-Length: 99999999999999999999999\r\n"
                                     "\r\n").encode(), 0, b""),
        ("chunked garbage", (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
         + b"zz\r\n{}\r\n0\r\n\r\n", 0, b""),
        ("chunked + length smuggling", (head + "Content-Length: 4\r\nTransfer-Encoding: "
                                        "chunked\r\n\r\n").encode()
         + b"0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, b""),
        ("2 MB body", (head + f"Content-Length: {2 << 20}\r\n\r\n").encode()
         + b"{" * (2 << 20), 0, b""),
        ("slow body, then the rest", (head + f"Content-Length: {len(body)}\r\n\r\n"
                                      ).encode() + body[:10], 1.0, body[10:]),
        ("slow headers", f"GET {PATH} HTTP/1.1\r\n".encode(), 1.0,
         f"Host: {host}\r\n{auth}\r\n".encode()),
        ("short body (lying Content-Length)", (head + "Content-Length: 1000\r\n\r\n"
                                               ).encode() + body, 0, b""),
        ("deep JSON", (head + "Content-Length: 200013\r\n\r\n").encode()
         + b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 0, b""),
        ("method override", f"DELETE {PATH}?_method=POST HTTP/1.1\r\nHost: x\r\n"
                            "X-HTTP-Method-Override: POST\r\n\r\n".encode(), 0, b""),
    ]


def random_request(rng: random.Random, host: str) -> bytes:
    """One request built from random pieces, some valid, most not."""
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW",
               "G\x00T", ""]
    paths = [PATH, f"{PATH}/{uuid.uuid4()}", "/v2.0/agents", f"/v2.0/agents/{uuid.uuid4()}",
             "/", "/v2.0", "/v2.0/extensions", "/%ff%fe", "/v2.0/agent-memberships?limit=-1",
             "/v2.0/agent-memberships?sort_key=" + "x" * 300, "//", "*"]
    path = rng.choice(paths)
    if rng.random() < 0.3:
        path += "".join(chr(rng.randrange(1, 256)) for _ in range(rng.randrange(1, 20)))
    version = rng.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""])
    lines = [f"{rng.choice(methods)} {path} {version}", f"Host: {host}"]
    for _ in range(rng.randrange(0, 6)):
        name = rng.choice(["Content-Length", "Transfer-Encoding", "X-Auth-Token", "Expect",
                           "Content-Type", "Connection", "X-Roles", " folded", "X"])
        value = rng.choice(["0", "-3", "chunked", "100-continue", "close", "admin",
                            "application/json", "\x7f", "9" * 30, ""])
        lines.append(f"{name}: {value}")
    body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


def http_attacks(api: str, seed: int, fuzz: int, token: str = "") -> dict:
    parts = urllib.parse.urlsplit(api)
    port, host = parts.port or 80, parts.netloc
    statuses: dict[str, int | None] = {}
    for name, first, pause, rest in crafted_requests(host, token):
        statuses[name] = exchange(port, first, pause, rest)
    # Abandoned slow bodies, in parallel: they must not stop the server answering others.
    head = (f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n"
            ).encode()
    abandoned = [threading.Thread(target=exchange, args=(port, head + b"{", 3.0, b"", False))
                 for _ in range(24)]
    for thread in abandoned:
        thread.start()
    time.sleep(0.5)
    statuses["answers while 24 slow bodies hang"] = exchange(
        port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    for thread in abandoned:
        thread.join(TIMEOUT)
    rng = random.Random(seed)
    fuzzed: dict[str, int] = {}
    deadline = time.monotonic() + 120
    for _ in range(fuzz):
        if time.monotonic() > deadline:
            break
        status = exchange(port, random_request(rng, host))
        key = "no answer" if status is None else str(status)
        fuzzed[key] = fuzzed.get(key, 0) + 1
    return {"crafted": statuses, "fuzz": fuzzed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--zookeeper", required=True, help="127.0.0.1:PORT/ROOT")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fuzz", type=int, default=300, help="random requests (bounded)")
    args = parser.parse_args(argv)
    for address in (urllib.parse.urlsplit(args.api).hostname,
                    args.zookeeper.split(":")[0]):
        if address not in ("127.0.0.1", "localhost"):
            parser.error("this tool only ever attacks 127.0.0.1")
    hosts, _, root = args.zookeeper.partition("/")
    root = "/" + root.strip("/")
    reader = KazooClient(hosts)
    reader.start(timeout=TIMEOUT)
    before = snapshot(reader, root)
    nsdb = nsdb_attacks(hosts, root)
    http = http_attacks(args.api, args.seed, args.fuzz)
    after = snapshot(reader, root)
    reader.stop()
    reader.close()
    statuses = [s for s in http["crafted"].values() if s is not None] + [
        int(k) for k in http["fuzz"] if k != "no answer"]
    answering = exchange(urllib.parse.urlsplit(args.api).port or 80,
                         b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 200
    report = {
        "nsdb": nsdb, "http": http,
        "nsdb_writes_allowed": sorted(k for k, v in nsdb.items() if v == "ALLOWED"),
        # 501 (a method or transfer coding the server does not implement) and 505 (an HTTP
        # version it does not speak) are the answers RFC 9110 prescribes for the request,
        # not server faults; every other 5xx is one.
        "server_errors": sorted(s for s in statuses if s >= 500 and s not in PROTOCOL_5XX),
        "protocol_refusals": sorted(s for s in statuses if s in PROTOCOL_5XX),
        "nsdb_changed": sorted(set(before) ^ set(after)
                               | {p for p in before if after.get(p, before[p]) != before[p]}),
        "still_answering": answering,
        "nodes_checked": len(before),
    }
    print(json.dumps(report, indent=2, sort_keys=True))
    ok = (not report["nsdb_writes_allowed"] and not report["server_errors"]
          and not report["nsdb_changed"] and answering)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
