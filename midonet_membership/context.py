"""Who is asking, and under which request id (the tasks' transaction id)."""

from __future__ import annotations

import dataclasses
import random

# The version (4) and variant (RFC 4122) bits of a random UUID.
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def new_request_id() -> str:
    """``req-`` and a random (version 4) UUID, as oslo.context's.

    Drawn from :mod:`random` (seeded from the OS, and again in each forked worker) instead
    of ``uuid.uuid4()``'s ``os.urandom``: every request takes one, and that was a system
    call, a release of the GIL and a ``UUID`` object each. A request id names a request
    in logs and the journal; nobody has to be unable to guess it."""
    h = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"req-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclasses.dataclass(frozen=True)
class RequestContext:
    request_id: str
    user_id: str | None = None
    project_id: str | None = None
    roles: tuple[str, ...] = ()
    remote_address: str | None = None  # the peer of the HTTP connection (audit trail)

    @property
    def requested_by(self) -> str | None:
        """Who the journal names as the author: the token's user (the admin token's is
        "admin-token"); the project goes to the task's ``tenant_id``."""
        return self.user_id

    @classmethod
    def admin(cls, request_id: str | None = None) -> RequestContext:
        """The context of the service itself (CONFIG at start-up, the CLI's db commands)."""
        return cls(request_id=request_id or new_request_id(), roles=("admin",))

    def credentials(self) -> dict[str, object]:
        """The creds dict oslo.policy checks rules against."""
        return {"user_id": self.user_id, "project_id": self.project_id,
                "tenant_id": self.project_id, "roles": list(self.roles)}
