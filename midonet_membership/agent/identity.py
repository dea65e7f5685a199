"""The host's identity: a UUID kept in ``midonet_host_id.properties`` (``host_uuid=<uuid>``).

Generated once on first start and never changed: a new id would make the host a stranger to
its own membership. A file that exists but cannot be read as an id stops the agent instead
of silently minting a new identity.
"""

from __future__ import annotations

import os
import uuid


class HostIdError(Exception):
    """The host id file exists but does not hold a host id."""


def load_or_create(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return _create(path)
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "host_uuid":
            try:
                return str(uuid.UUID(value.strip()))
            except ValueError:
                raise HostIdError(f"{path}: host_uuid {value.strip()!r} is not a UUID; fix "
                                  "the file or remove it to give this host a new identity") \
                    from None
    raise HostIdError(f"{path}: no host_uuid=<uuid> line; fix the file or remove it to give "
                      "this host a new identity")


def _create(path: str) -> str:
    host_id = str(uuid.uuid4())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"host_uuid={host_id}\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile: theirs wins
    except FileExistsError:
        os.unlink(tmp)
        return load_or_create(path)
    os.unlink(tmp)
    return host_id
