"""Leadership: of several importers exactly one applies tasks at a time.

On ZooKeeper this is kazoo's lock recipe (the original's leader latch); with the SQLite NSDB,
whose importers share one host, an exclusive ``flock`` next to the database file. Leadership
is only an efficiency: a deposed leader that still believes it leads cannot apply anything,
because every NSDB apply compares-and-sets the importer's position.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import urllib.parse
from collections.abc import Iterator

LOG = logging.getLogger(__name__)


@contextlib.contextmanager
def leadership(nsdb_url: str, identifier: str,
               stop: threading.Event) -> Iterator[threading.Event | None]:
    """Block until this process leads or ``stop`` is set.

    Yields an event that is set if leadership is lost while leading (ZooKeeper session
    lost), or None when ``stop`` was set before leadership came.
    """
    scheme = urllib.parse.urlsplit(nsdb_url).scheme
    if scheme == "zookeeper":
        with _zookeeper_lock(nsdb_url, identifier, stop) as leading:
            yield leading
    elif scheme == "sqlite":
        with _file_lock(nsdb_url.removeprefix("sqlite:///").split("?")[0], stop) as leading:
            yield leading
    else:
        raise ValueError(f"no leader election for NSDB scheme {scheme!r}")


@contextlib.contextmanager
def _file_lock(db_path: str, stop: threading.Event) -> Iterator[threading.Event | None]:
    path = os.path.abspath(db_path) + ".importer-lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while not stop.is_set():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                stop.wait(0.2)
                continue
            LOG.info("importer is the leader (lock %s)", path)
            yield threading.Event()  # a held flock is never lost while the process lives
            return
        yield None
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def _zookeeper_lock(url: str, identifier: str,
                    stop: threading.Event) -> Iterator[threading.Event | None]:
    from kazoo.client import KazooClient, KazooState
    from kazoo.exceptions import LockTimeout

    from midonet_membership.nsdb.zookeeper import owner_acl, reconnecting

    parts = urllib.parse.urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    root = parts.path.rstrip("/") or "/midonet"
    auth = acl = None
    if parts.username:
        user, password = (urllib.parse.unquote(p or "") for p in (parts.username, parts.password))
        auth = [("digest", f"{user}:{password}")]  # sent at connect; add_auth needs a session
        acl = owner_acl(user, password)  # the cluster's like the rest of its tree
    client = KazooClient(hosts=hosts, timeout=5.0, auth_data=auth, default_acl=acl,
                         connection_retry=reconnecting())
    lost = threading.Event()
    client.add_listener(lambda state: lost.set() if state == KazooState.LOST else None)
    client.start(timeout=15)
    lock = client.Lock(f"{root}/importer/election", identifier)
    try:
        while not stop.is_set():
            try:
                acquired = lock.acquire(timeout=0.5)
            except LockTimeout:
                continue
            if acquired:
                LOG.info("importer %s is the leader", identifier)
                # No lock.release() after: closing the session below deletes the lock node
                # (it is ephemeral) at once, or ZooKeeper does when the session times out,
                # and a release would wait, unbounded, for a ZooKeeper that is down.
                yield lost
                return
        yield None
    finally:
        client.stop()
        client.close()
