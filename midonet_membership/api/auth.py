"""Who may call the API: three explicit strategies, chosen by ``auth_strategy``.

``token``    the all-in-one default: one random admin token, stored 0600 in the state dir
             and compared in constant time, so reaching the port is not enough.
``keystone`` production: keystonemiddleware validates the token and sets the X-* headers.
``noauth``   trusts X-Roles/X-Project-Id/X-User-Id; only on loopback (checked at start-up).
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import secrets
import stat
from collections.abc import Callable

import webob
from oslo_config import cfg

from midonet_membership import exceptions
from midonet_membership.api import validators
from midonet_membership.api.definitions.agent_membership import PROJECT_ID_FIELD_SIZE
from midonet_membership.conf import ConfigError
from midonet_membership.context import RequestContext, new_request_id

Authenticator = Callable[[webob.Request, str], RequestContext]
ADMIN_TOKEN_USER = "admin-token"  # who the journal names for the generated admin token


class AdminTokenError(ConfigError):
    """The admin token file exists but cannot be trusted; the message says why."""


def ensure_admin_token(path: str) -> str:
    """Read the admin token, creating it (32 random bytes, mode 0600) on first start.

    The file is the key to every membership: one that another user owns or may read, or a
    symlink (a planted link could make us write our token where others read it, or read
    theirs), is refused rather than repaired, so the operator learns of it. It is created
    with ``O_EXCL | O_NOFOLLOW``: a file or link planted between the check and the creation
    makes the creation fail instead of being followed or truncated.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create_admin_token(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AdminTokenError(f"admin token file {path} is a symbolic link; refusing "
                                  "to follow it (remove it and restart)") from None
        raise AdminTokenError(f"cannot open admin token file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r+") as f:
        _check_private(path, os.fstat(fd))
        token = f.read().strip()
        if not token:  # created, then the process died before the write
            token = _new_token()
            f.write(token + "\n")
        return token


def _check_private(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise AdminTokenError(f"admin token file {path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise AdminTokenError(f"admin token file {path} is owned by uid {st.st_uid}, not by "
                              f"this user (uid {os.geteuid()}); refusing a token another "
                              "user could have chosen or read")
    if st.st_mode & 0o077:
        raise AdminTokenError(f"admin token file {path} has mode "
                              f"{stat.S_IMODE(st.st_mode):04o}; other users may read or change "
                              f"it. Make it private (chmod 600 {path}) or remove it to "
                              "generate a new token")


def _create_admin_token(path: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another process created it meanwhile: read and check theirs
        return ensure_admin_token(path)
    token = _new_token()
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # the umask could only have narrowed it; keep it exact
        f.write(token + "\n")
    return token


def _new_token() -> str:
    return secrets.token_hex(32)  # never starts with "-", which a CLI would take for an option


def token_authenticator(admin_token: str) -> Authenticator:
    expected = admin_token.encode()

    def authenticate(req: webob.Request, request_id: str) -> RequestContext:
        # the header, without building webob's header view for it (a tenth of a show)
        given = req.environ.get("HTTP_X_AUTH_TOKEN", "").encode()
        if not given or not hmac.compare_digest(given, expected):
            raise exceptions.NotAuthenticated()
        return RequestContext(request_id=request_id, user_id=ADMIN_TOKEN_USER,
                              project_id="admin", roles=("admin",),
                              remote_address=req.remote_addr)
    return authenticate


def _roles(header: str | None) -> tuple[str, ...]:
    return tuple(r.strip().lower() for r in (header or "").split(",") if r.strip())


def noauth_authenticator(req: webob.Request, request_id: str) -> RequestContext:
    project_id = req.environ.get("HTTP_X_PROJECT_ID")  # req.headers', without its view
    if project_id is not None and (len(project_id) > PROJECT_ID_FIELD_SIZE
                                   or not project_id.isprintable()):
        _check_project_header(project_id)
    return RequestContext(request_id=request_id, user_id=req.headers.get("X-User-Id"),
                          project_id=project_id,
                          roles=_roles(req.headers.get("X-Roles")),
                          remote_address=req.remote_addr)


def _check_project_header(project_id: str) -> None:
    """The project a client names in noauth's ``X-Project-Id`` becomes its tasks'
    ``tenant_id``, a column of 255 characters (and PostgreSQL's text refuses NUL): one
    the column cannot keep is refused here, as a ``tenant_id`` in a body is, not left to
    fail the write (a 500). The user id is cut to its column's length instead (the
    journal's ``requested_by``): it only says who asked. Under Keystone both come from a
    validated token. Called only for a long or unprintable header: the usual one costs
    a ``len`` and an ``isprintable``."""
    error = validators.validate_project_id(project_id, PROJECT_ID_FIELD_SIZE)
    if error is not None:
        raise exceptions.BadRequest(f"Invalid X-Project-Id header: {error}.")


def keystone_authenticator(req: webob.Request, request_id: str) -> RequestContext:
    """Trust the headers keystonemiddleware set after validating the token."""
    if req.headers.get("X-Identity-Status") != "Confirmed":
        raise exceptions.NotAuthenticated()
    return RequestContext(request_id=request_id, user_id=req.headers.get("X-User-Id"),
                          project_id=req.headers.get("X-Project-Id"),
                          roles=_roles(req.headers.get("X-Roles")),
                          remote_address=req.remote_addr)


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
    if conf.audit.enabled and strategy != "keystone":
        raise ConfigError(f"[audit] enabled needs auth_strategy = keystone (not {strategy!r}): "
                          "a CADF event names the user of a validated Keystone token")
    if strategy == "token":
        return token_authenticator(ensure_admin_token(conf.admin_token_file)), _no_wrap
    if strategy == "noauth":
        check_noauth_bind(conf.bind_host)
        return noauth_authenticator, _no_wrap

    def wrap(app: Callable) -> Callable:
        if conf.audit.enabled:
            app = _audited(app, conf)
        # delay_auth_decision: we answer 401 ourselves, in Neutron's error format.
        middleware = _keystone_middleware()(app, {"delay_auth_decision": True,
                                                  "oslo_config_config": conf})
        return _with_request_id(_answer_unavailable(middleware))
    return keystone_authenticator, wrap


def _audited(app: Callable, conf: cfg.ConfigOpts) -> Callable:
    """keystonemiddleware's CADF audit, inside auth_token so that the initiator it reports
    comes from the validated token (auth_token strips client-sent X-User-Id headers)."""
    from keystonemiddleware import audit

    return audit.AuditMiddleware(app, audit_map_file=conf.audit.audit_map_file,
                                 ignore_req_list=conf.audit.ignore_req_list,
                                 log_name="midonet_membership.audit",
                                 service_name="midonet-membership",
                                 oslo_config_config=conf)


def _with_request_id(app: Callable) -> Callable:
    """Choose the request id before the middleware runs, so a CADF event and the journal's
    tasks name the same ``req-...`` (the app reuses ``openstack.request_id``)."""
    def call(environ: dict, start_response: Callable):
        environ.setdefault("openstack.request_id", new_request_id())
        return app(environ, start_response)
    return call


def _keystone_middleware() -> type:
    """keystonemiddleware's AuthProtocol, telling "Keystone is down" apart from "bad token".

    With ``delay_auth_decision`` the middleware reports an unreachable Keystone as an
    invalid token (so a client would get 401 and drop a good token). ``fetch_token`` is the
    method the middleware documents for overriding; the InvalidToken it raises for an
    outage is raised while handling the connection error, which ``__context__`` keeps.
    tests/e2e/test_keystone_auth.py stops a real Keystone and fails loudly (401, not 503)
    if keystonemiddleware changes this.
    """
    from keystoneauth1 import exceptions as ksa_exceptions
    from keystonemiddleware import auth_token

    unreachable = (ksa_exceptions.ConnectFailure, ksa_exceptions.DiscoveryFailure,
                   ksa_exceptions.RequestTimeout, auth_token.ServiceError)

    class AuthProtocol(auth_token.AuthProtocol):
        def fetch_token(self, token, **kwargs):
            try:
                return super().fetch_token(token, **kwargs)
            except auth_token.InvalidToken as exc:
                if isinstance(exc.__context__, unreachable):
                    raise exceptions.ServiceUnavailable(service="Keystone") from exc
                raise
    return AuthProtocol


def _answer_unavailable(middleware: Callable) -> Callable:
    def call(environ: dict, start_response: Callable):
        try:
            return middleware(environ, start_response)
        except exceptions.ServiceUnavailable as exc:
            from midonet_membership.api.app import error_response
            return error_response(exc, environ.get("openstack.request_id"))(
                environ, start_response)
    return call


def _no_wrap(app: Callable) -> Callable:
    return app
