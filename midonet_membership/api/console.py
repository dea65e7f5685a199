"""The operator's console: static files served by the API server, and what they read.

The console is three files in ``api/console/`` (HTML, JavaScript, CSS; no build step, no CDN)
that call the same API as the CLI with the operator's token. What the API did not expose
before is one admin-only read endpoint, ``GET /v2.0/deployment-status``: the zone, the
importer's lag and failures, and the last tasks of the journal.

With ``auth_strategy = keystone`` the login form posts the user name and password to
``/console/keystone-token``, which passes them to Keystone once and hands the issued token
back to the browser: nothing is stored server-side, and the browser needs no CORS access to
Keystone.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

import webob
from oslo_config import cfg
from sqlalchemy.engine import Engine

from midonet_membership import exceptions
from midonet_membership.api.app import error_response
from midonet_membership.api.policies import Authorizer
from midonet_membership.context import RequestContext
from midonet_membership.db import journal
from midonet_membership.db.engine import reader
from midonet_membership.nsdb.base import NSDB, NSDBUnavailable

LOG = logging.getLogger(__name__)

RECENT_TASKS = 15
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# No inline script or style, nothing from elsewhere: the console runs with no network.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _files() -> dict[str, tuple[str, bytes]]:
    """path -> (content type, bytes), read once from the package."""
    folder = resources.files("midonet_membership.api") / "console"
    out = {}
    for entry in folder.iterdir():
        suffix = entry.name[entry.name.rfind("."):]
        if suffix in _TYPES:
            out[f"/console/{entry.name}"] = (f"{_TYPES[suffix]}; charset=utf-8",
                                             entry.read_bytes())
    out["/"] = out["/console/index.html"]
    return out


def pages(conf: cfg.ConfigOpts) -> tuple[Callable, dict[str, Callable]]:
    """The console page for ``GET /`` and the WSGI apps of its other paths."""
    files = _files()
    config = json.dumps({"auth_strategy": conf.auth_strategy}).encode()

    def static(environ: dict, start_response: Callable) -> Iterable[bytes]:
        req = webob.Request(environ)
        if req.method not in ("GET", "HEAD"):
            return error_response(exceptions.MethodNotAllowed(
                method=req.method, resource=req.path_info, allowed="GET"))(
                environ, start_response)
        content_type, body = files[req.path_info]
        response = webob.Response(body=body, content_type=None, charset=None)
        response.headers["Content-Type"] = content_type
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.cache_control = "no-cache"
        response.vary = ("Accept",)
        return response(environ, start_response)

    def config_json(environ: dict, start_response: Callable) -> Iterable[bytes]:
        response = webob.Response(body=config, content_type="application/json", charset=None)
        return response(environ, start_response)

    routes: dict[str, Callable] = {path: static for path in files if path != "/"}
    routes["/console/config.json"] = config_json
    if conf.auth_strategy == "keystone":
        routes["/console/keystone-token"] = keystone_login(conf)
    return static, routes


def keystone_login(conf: cfg.ConfigOpts) -> Callable:
    """``POST /console/keystone-token``: a password authentication passed through to
    Keystone (v3, project scope); answers ``{"token", "roles", "expires_at"}``."""

    def login(environ: dict, start_response: Callable) -> Iterable[bytes]:
        req = webob.Request(environ)
        try:
            if req.method != "POST":
                raise exceptions.MethodNotAllowed(method=req.method, resource=req.path_info,
                                                  allowed="POST")
            answer = _keystone_token(_keystone_url(conf), _login_form(req),
                                     _keystone_tls(conf))
            response = webob.Response(body=json.dumps(answer).encode(),
                                      content_type="application/json", charset=None)
        except exceptions.MembershipError as exc:
            response = error_response(exc)
        response.cache_control = "no-store"
        return response(environ, start_response)
    return login


def _login_form(req: webob.Request) -> dict[str, str]:
    try:
        form = json.loads(req.body or b"{}")
    except ValueError:
        raise exceptions.BadRequest(resource="login", msg="the body must be JSON") from None
    fields = ("username", "password", "project", "domain")
    if not isinstance(form, dict) or not all(isinstance(form.get(f), str) and form[f]
                                             for f in fields):
        raise exceptions.BadRequest(resource="login",
                                    msg="username, password, project and domain are required")
    return {f: form[f] for f in fields}


def _keystone_url(conf: cfg.ConfigOpts) -> str:
    group = conf.keystone_authtoken
    url = group.www_authenticate_uri or getattr(group, "auth_url", None)
    if not url:
        raise exceptions.MembershipError(
            "The console cannot log in to Keystone: set [keystone_authtoken] "
            "www_authenticate_uri.")
    url = url.rstrip("/")
    return url if url.endswith("/v3") else url + "/v3"


def _keystone_tls(conf: cfg.ConfigOpts) -> ssl.SSLContext:
    """The TLS settings keystonemiddleware uses for the same Keystone: a private CA
    (``cafile``), a client certificate, or ``insecure``."""
    group = conf.keystone_authtoken
    context = ssl.create_default_context(cafile=group.cafile or None)
    if group.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if group.certfile:
        context.load_cert_chain(group.certfile, group.keyfile or None)
    return context


def _keystone_token(base: str, form: dict[str, str], tls: ssl.SSLContext) -> dict[str, Any]:
    domain = {"name": form["domain"]}
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": form["username"], "domain": domain, "password": form["password"]}}},
        "scope": {"project": {"name": form["project"], "domain": domain}}}}
    request = urllib.request.Request(f"{base}/auth/tokens", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls) as resp:
            token = resp.headers["X-Subject-Token"]
            issued = json.load(resp)["token"]
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):
            raise exceptions.NotAuthenticated(
                f"Keystone refused the login ({exc.code}): check the user name, password, "
                "project and domain.") from None
        raise exceptions.ServiceUnavailable(f"Keystone answered {exc.code}.") from None
    except (OSError, ValueError, KeyError) as exc:  # URLError is an OSError
        LOG.warning("Keystone login failed: %s", exc)
        reason = getattr(exc, "reason", None)
        if isinstance(reason, ssl.SSLError):
            raise exceptions.ServiceUnavailable(
                f"Keystone's certificate was refused ({reason}): check [keystone_authtoken] "
                "cafile or insecure.") from None
        raise exceptions.ServiceUnavailable("Keystone could not be reached.") from None
    return {"token": token, "expires_at": issued.get("expires_at"),
            "roles": sorted(r["name"] for r in issued.get("roles", []))}


# -- GET /v2.0/deployment-status ---------------------------------------------------------------
def deployment_status(engine: Engine, nsdb: NSDB, authorizer: Authorizer) -> Callable:
    """The endpoint handler: admin-only like every other read (403 for anyone else)."""

    def handle(req: webob.Request, context: RequestContext) -> tuple[int, dict]:
        if not authorizer.allowed("get_deployment_status", context.credentials()):
            raise exceptions.PolicyNotAuthorized(action="get_deployment_status")
        try:
            return 200, {"deployment_status": read_status(engine, nsdb)}
        except NSDBUnavailable as exc:  # the memberships keep working meanwhile
            raise exceptions.ServiceUnavailable(
                f"The deployment status is unavailable: the NSDB cannot be read ({exc}); "
                "agent-memberships still work.") from None
    return handle


def read_status(engine: Engine, nsdb: NSDB, recent: int = RECENT_TASKS) -> dict[str, Any]:
    zone = nsdb.get_tunnel_zone()
    members = len(nsdb.list_members()) if zone is not None else 0
    position = nsdb.get_import_position()  # world-readable: the API needs no cluster rights
    with reader(engine) as conn:
        last = journal.last_processed_id(conn)
        lag_tasks, lag_seconds = journal.backlog(
            conn, position.high, [(g.low, g.high) for g in position.gaps])
        failed = journal.failure_count(conn)
        tasks = journal.recent_tasks(conn, recent)
    return {
        "tunnel_zone": None if zone is None else {
            "id": zone.id, "name": zone.name, "type": zone.type, "members": members},
        "importer": {"last_processed_id": last, "lag_tasks": lag_tasks,
                     "lag_seconds": lag_seconds, "failed_tasks": failed,
                     "open_gaps": len(position.gaps),
                     "holding": position.holds_new_tasks()},
        "recent_tasks": [_task(t, position.is_pending(t.id)) for t in tasks],
    }


def _task(task: journal.Task, pending: bool) -> dict[str, Any]:
    """A task as the console lists it: its columns (an audit trail's included) without the
    raw ``data``, plus what the data says in a word (the tunnel IP or the protocol)."""
    out = {k: v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime.datetime) else v
           for k, v in dataclasses.asdict(task).items() if k != "data"}
    try:
        data = task.payload()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("ip_address", "tunnel_protocol"):
            if isinstance(data.get(key), str):
                out[key] = data[key]
    out["processed"] = not pending
    return out
