"""Who is asking, and under which request id (the tasks' transaction id)."""

from __future__ import annotations

import dataclasses
import uuid


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


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
