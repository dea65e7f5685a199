"""Who may call the API: three explicit strategies, chosen by ``auth_strategy``.

``token``    the all-in-one default: one random admin token, stored 0600 in the state dir
             and compared in constant time, so reaching the port is not enough.
``keystone`` production: keystonemiddleware validates the token and sets the X-* headers.
``noauth``   trusts X-Roles/X-Project-Id/X-User-Id; only on loopback (checked at start-up).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Callable

import webob
from oslo_config import cfg

from midonet_membership import exceptions
from midonet_membership.conf import ConfigError
from midonet_membership.context import RequestContext

Authenticator = Callable[[webob.Request, str], RequestContext]


def ensure_admin_token(path: str) -> str:
    """Read the admin token, creating it (32 random bytes, mode 0600) on first start."""
    try:
        with open(path) as f:
            token = f.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    token = secrets.token_hex(32)  # never starts with "-", which a CLI would take for an option
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def token_authenticator(admin_token: str) -> Authenticator:
    expected = admin_token.encode()

    def authenticate(req: webob.Request, request_id: str) -> RequestContext:
        given = req.headers.get("X-Auth-Token", "").encode()
        if not given or not hmac.compare_digest(given, expected):
            raise exceptions.NotAuthenticated()
        return RequestContext(request_id=request_id, user_id="admin", project_id="admin",
                              roles=("admin",))
    return authenticate


def _roles(header: str | None) -> tuple[str, ...]:
    return tuple(r.strip().lower() for r in (header or "").split(",") if r.strip())


def noauth_authenticator(req: webob.Request, request_id: str) -> RequestContext:
    return RequestContext(request_id=request_id, user_id=req.headers.get("X-User-Id"),
                          project_id=req.headers.get("X-Project-Id"),
                          roles=_roles(req.headers.get("X-Roles")))


def keystone_authenticator(req: webob.Request, request_id: str) -> RequestContext:
    """Trust the headers keystonemiddleware set after validating the token."""
    if req.headers.get("X-Identity-Status") != "Confirmed":
        raise exceptions.NotAuthenticated()
    return RequestContext(request_id=request_id, user_id=req.headers.get("X-User-Id"),
                          project_id=req.headers.get("X-Project-Id"),
                          roles=_roles(req.headers.get("X-Roles")))


def check_noauth_bind(bind_host: str) -> None:
    """noauth believes any header, so it must never be reachable from another machine."""
    try:
        loopback = ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        loopback = bind_host == "localhost"
    if not loopback:
        raise ConfigError(f"auth_strategy = noauth trusts request headers and may only bind a "
                          f"loopback address, not {bind_host!r}")


def build(conf: cfg.ConfigOpts) -> tuple[Authenticator, Callable]:
    """The authenticator for ``conf.auth_strategy`` and the WSGI wrapper it needs."""
    strategy = conf.auth_strategy
    if strategy == "token":
        return token_authenticator(ensure_admin_token(conf.admin_token_file)), _no_wrap
    if strategy == "noauth":
        check_noauth_bind(conf.bind_host)
        return noauth_authenticator, _no_wrap
    from keystonemiddleware import auth_token

    def wrap(app: Callable) -> Callable:
        # delay_auth_decision: we answer 401 ourselves, in Neutron's error format.
        return auth_token.AuthProtocol(app, {"delay_auth_decision": True,
                                             "oslo_config_config": conf})
    return keystone_authenticator, wrap


def _no_wrap(app: Callable) -> Callable:
    return app
