"""The WSGI application: route -> controller -> JSON, with Neutron's error bodies.

Every response carries ``x-openstack-request-id``; that id is also the transaction id of the
tasks the request wrote, so an operator can follow one request into the journal.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import orjson
import webob
import webob.util

from midonet_membership import exceptions, metrics
from midonet_membership.api.auth import Authenticator
from midonet_membership.api.resource import MAX_BODY_BYTES, Controller, forwarded_url
from midonet_membership.context import RequestContext, new_request_id

LOG = logging.getLogger(__name__)
API_VERSION = "v2.0"
JSON = "application/json"


OPERATION = "midonet.operation"  # environ key: the operation the request was routed to
# A single (non-resource) endpoint: path under /v2.0/ -> (policy-checked handler, its name)
Endpoint = Callable[[webob.Request, RequestContext], tuple[int, Any]]


# A 401's WWW-Authenticate where no Keystone is configured (the admin token, noauth).
UNKNOWN_KEYSTONE = 'Keystone uri="unknown"'


class Application:
    """Routes a request to a declared resource; ``endpoints`` are extra read-only JSON
    endpoints under ``/v2.0/`` (each checks its own policy)."""

    def __init__(self, controllers: Iterable[Controller], extensions: Iterable[ModuleType],
                 authenticate: Authenticator,
                 endpoints: dict[str, Endpoint] | None = None,
                 challenge: str | None = UNKNOWN_KEYSTONE) -> None:
        self.controllers: dict[str, Controller] = {}
        for controller in controllers:
            for path in controller.resource.paths:
                self.controllers[path] = controller
        self.extensions = {ext.ALIAS: _describe(ext) for ext in extensions}
        self.authenticate = authenticate
        self.endpoints = dict(endpoints or {})
        # A 401's WWW-Authenticate; None where keystonemiddleware adds its own (with the
        # configured Keystone's address) around the app.
        self.challenge = challenge
        self._counters: dict[tuple[str, int], Any] = {}
        self._timers: dict[str, Any] = {}

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        req = webob.Request(environ)
        # set by the Keystone pipeline, so that its CADF events carry the same id
        request_id = environ.get("openstack.request_id") or new_request_id()
        try:
            _check_url(req)
            _check_length(req)
            status, body = self._dispatch(req, request_id)
        except exceptions.MembershipError as exc:
            status, body = exc.code, _fault(exc)
        except Exception:  # never a traceback on the wire; the log has it
            LOG.exception("%s %r failed (request %s)", req.method, environ.get("PATH_INFO"),
                          request_id)
            status, body = 500, _server_error(request_id)
        head = req.method == "HEAD"
        try:
            status_line, headers, payload = _response(status, body, request_id, head,
                                                      self.challenge)
        except orjson.JSONEncodeError:  # (a TypeError) free while nothing is raised
            status, body = _encodable(status, body, req, request_id)
            status_line, headers, payload = _response(status, body, request_id, head,
                                                      self.challenge)
        self._measure(environ.get(OPERATION, "other"), status, started)
        start_response(status_line, headers)
        return [payload]

    def _measure(self, operation: str, status: int, started: float) -> None:
        """One counter increment and one histogram observation: the only per-request cost
        of the metrics (children are looked up once and kept, not per request)."""
        counter = self._counters.get((operation, status))
        if counter is None:
            counter = self._counters[(operation, status)] = metrics.API_REQUESTS.labels(
                operation, str(status))
        timer = self._timers.get(operation)
        if timer is None:
            timer = self._timers[operation] = metrics.API_REQUEST_DURATION.labels(operation)
        counter.inc()
        timer.observe(time.perf_counter() - started)

    def _dispatch(self, req: webob.Request, request_id: str) -> tuple[int, Any]:
        parts = [p for p in _path(req).split("/") if p]
        if parts and parts[-1].endswith(".json"):
            parts[-1] = parts[-1][:-5]
        if not parts:
            _only(req, "GET")
            req.environ[OPERATION] = "list_versions"
            return 200, self._versions(req)
        context = self.authenticate(req, request_id)
        if parts[0] != API_VERSION:
            raise exceptions.ResourceNotFound()
        if len(parts) == 1:
            _only(req, "GET")
            req.environ[OPERATION] = "list_resources"
            return 200, self._resources(req)
        if parts[1] == "extensions":
            req.environ[OPERATION] = "list_extensions"
            return self._extension_route(req, parts[2:])
        endpoint = self.endpoints.get(parts[1])
        if endpoint is not None and len(parts) == 2:
            _only(req, "GET")
            req.environ[OPERATION] = f"get_{parts[1].replace('-', '_')}"
            return endpoint(req, context)
        controller = self.controllers.get(parts[1])
        if controller is None or len(parts) > 3:
            raise exceptions.ResourceNotFound()
        if len(parts) == 2:
            return _route(req, controller, _COLLECTION_ROUTES, (req, context))
        return _route(req, controller, _MEMBER_ROUTES, (req, context, parts[2]))

    def _extension_route(self, req: webob.Request, rest: list[str]) -> tuple[int, Any]:
        _only(req, "GET")
        if not rest:
            return 200, {"extensions": list(self.extensions.values())}
        if len(rest) == 1 and rest[0] in self.extensions:
            return 200, {"extension": self.extensions[rest[0]]}
        raise exceptions.ExtensionNotFound(alias=rest[0] if len(rest) == 1 else "/".join(rest))

    def _versions(self, req: webob.Request) -> dict:
        return {"versions": [{"id": API_VERSION, "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{_host_url(req)}/{API_VERSION}/"}]}]}

    def _resources(self, req: webob.Request) -> dict:
        seen: dict[str, Controller] = {}
        for controller in self.controllers.values():
            seen.setdefault(controller.resource.collection, controller)
        host_url = _host_url(req)
        return {"resources": [
            {"name": c.resource.name, "collection": c.resource.collection, "links": [
                {"rel": "self",
                 "href": f"{host_url}/{API_VERSION}/{c.resource.paths[0]}"}]}
            for c in seen.values()]}


def with_pages(api: Callable, pages: dict[str, Callable], console: Callable) -> Callable:
    """``api`` behind a router of pages that need no token: ``pages`` at exact paths
    (``/metrics``, the console's files and login), and ``console`` for ``GET /`` from a
    browser (one that prefers HTML to JSON; API clients keep getting the versions list).
    Served outside the authentication wrapper; one dict lookup per API request."""
    def route(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        page = pages.get(path)
        if page is None and path == "/" and _wants_html(environ.get("HTTP_ACCEPT", "")):
            page = console
        return (page or api)(environ, start_response)
    return route


def _response(status: int, body: Any, request_id: str, head: bool,
              challenge: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, headers and body, built directly: a webob.Response only to set these
    few headers cost a tenth of a show, and json.dumps a tenth of a list page (cProfile;
    orjson encodes a page of 100 in a tenth of json's time).

    A HEAD's body is encoded too, for its length (RFC 9110 §8.6: the Content-Length a GET
    would carry), and not sent: neither cheroot nor gunicorn would drop it for us."""
    payload = b"" if body is None else orjson.dumps(body)
    headers = [("x-openstack-request-id", request_id)]
    if body is not None:
        headers.append(("Content-Type", JSON))
    headers.append(("Content-Length", str(len(payload))))
    if status == 401 and challenge:
        headers.append(("WWW-Authenticate", challenge))
    return f"{status} {webob.util.status_reasons[status]}", headers, b"" if head else payload


def _encodable(status: int, body: Any, req: webob.Request,
               request_id: str) -> tuple[int, Any]:
    """The answer when orjson refused ``body``. An error's message may echo what the
    client sent, and text that is not valid Unicode (a lone UTF-16 surrogate) cannot be
    encoded: it is written as the escape Python shows for it (``\\ud800``), and the error
    keeps its status. Anything else is our own fault: a 500, logged."""
    if status >= 400:
        return status, _escape_invalid_unicode(body)
    LOG.exception("%s %r: the response could not be encoded (request %s)", req.method,
                  req.environ.get("PATH_INFO"), request_id)
    return 500, _server_error(request_id)


def _server_error(request_id: str) -> dict:
    return _fault(exceptions.MembershipError(
        "The server could not complete the request; see its log for "
        f"request {request_id}."))


def _escape_invalid_unicode(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escape_invalid_unicode(k): _escape_invalid_unicode(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escape_invalid_unicode(v) for v in value]
    if value is None or isinstance(value, bool | float) or (
            isinstance(value, int) and -(1 << 63) <= value < 1 << 64):
        return value
    return str(value)  # what orjson has no form for (an int over 64 bits, an object)


def _host_url(req: webob.Request) -> str:
    """``req.host_url`` with the scheme a proxy named in ``X-Forwarded-Proto``, as the
    pages' links have it (:func:`resource.forwarded_url`)."""
    environ = req.environ
    return forwarded_url(req.host_url, environ.get("wsgi.url_scheme"),
                         environ.get("HTTP_X_FORWARDED_PROTO"))


# method -> (operation, Controller method), for a collection's URL and a member's
_COLLECTION_ROUTES = {"GET": ("list", Controller.index), "POST": ("create", Controller.create)}
_MEMBER_ROUTES = {"GET": ("show", Controller.show), "PUT": ("update", Controller.update),
                  "DELETE": ("delete", Controller.delete)}


def _route(req: webob.Request, controller: Controller,
           handlers: dict[str, tuple[str, Callable]], args: tuple) -> tuple[int, Any]:
    """Run the handler of the request's method if the resource declares that operation."""
    resource = controller.resource
    method = "GET" if req.method == "HEAD" else req.method
    operation, handler = handlers.get(method, (None, None))
    if operation in resource.operations:
        req.environ[OPERATION] = f"{operation}_{resource.name}"
        return handler(controller, *args)
    if operation in resource.refusals:
        raise exceptions.MethodNotAllowed(resource.refusals[operation])
    allowed = sorted(m for m, (op, _) in handlers.items() if op in resource.operations)
    raise exceptions.MethodNotAllowed(method=req.method, resource=req.path_info,
                                      allowed=", ".join(allowed))


def _wants_html(accept: str) -> bool:
    """A browser's ``Accept`` (text/html before any JSON); curl's ``*/*``, no header, and
    API clients asking for JSON keep the versions list."""
    if "text/html" not in accept:
        return False
    return webob.acceptparse.create_accept_header(accept).best_match(
        [JSON, "text/html"]) == "text/html"


def _path(req: webob.Request) -> str:
    """``req.path_info``, which webob decodes as UTF-8 at every read: an ASCII path (the API's
    own, always) is already what decoding would give."""
    path = req.environ.get("PATH_INFO", "")
    return path if path.isascii() else req.path_info


def _check_url(req: webob.Request) -> None:
    """webob decodes the path and query as UTF-8 only when they are read; refuse others.
    An ASCII path (the server unquoted it) and a query without ``%`` escapes have nothing
    to decode: a show's, a create's, a delete's URL."""
    environ = req.environ
    query = environ.get("QUERY_STRING", "")
    if environ.get("PATH_INFO", "").isascii() and query.isascii() and "%" not in query:
        return
    try:
        _ = req.path_info, req.GET  # reading them decodes them
    except UnicodeDecodeError:
        raise exceptions.BadRequest(
            resource="URL", msg="the path and query string must be UTF-8") from None


def _check_length(req: webob.Request) -> None:
    """Refuse an announced body over the limit before anything else, unread.

    Any other answer would leave it unread, and cheroot then reads it whole into memory to
    keep the connection alive; after a 413 it closes the connection instead.
    """
    length = req.content_length or 0
    if length > MAX_BODY_BYTES:
        raise exceptions.RequestEntityTooLarge(limit=MAX_BODY_BYTES)
    if length < 0:  # webob parses "-5"; reading it would fail (500)
        raise exceptions.BadRequest("Content-Length must not be negative.")


def _only(req: webob.Request, method: str) -> None:
    if req.method not in (method, "HEAD"):
        raise exceptions.MethodNotAllowed(method=req.method, resource=req.path,
                                          allowed=method)


def _describe(ext: ModuleType) -> dict[str, Any]:
    return {"name": ext.NAME, "alias": ext.ALIAS, "description": ext.DESCRIPTION,
            "updated": ext.UPDATED_TIMESTAMP, "links": []}


def error_response(exc: exceptions.MembershipError,
                   request_id: str | None = None) -> webob.Response:
    """The answer to an error raised outside the application (by its auth middleware)."""
    response = webob.Response(status=exc.code, charset=None, content_type=JSON,
                              body=json.dumps(_fault(exc)).encode())
    response.headers["x-openstack-request-id"] = request_id or new_request_id()
    return response


def _fault(exc: exceptions.MembershipError) -> dict:
    return {"NeutronError": {"type": exc.type, "message": exc.msg, "detail": ""}}
