"""The engine that serves any declared resource: validation, policy, filters, sorting, paging.

A resource is a declaration module (``api/definitions/*.py``) plus a plugin with Neutron's
shapes (``create(context, items)``, ``get``, ``list(context, query)``, ``update``, ``delete``).
Nothing here knows about memberships or agents.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
import urllib.parse
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import webob

from midonet_membership import exceptions
from midonet_membership.api import validators
from midonet_membership.api.policies import Authorizer
from midonet_membership.context import RequestContext
from midonet_membership.paging import ListQuery

if TYPE_CHECKING:
    import orjson

RESERVED_QUERY_PARAMS = frozenset(
    {"fields", "sort_key", "sort_dir", "limit", "marker", "page_reverse"})
MAX_BODY_BYTES = 1 << 20
# A larger limit means "all of them" anyway; SQLite and PostgreSQL refuse LIMITs past 2**63.
MAX_SQL_LIMIT = (1 << 31) - 1
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")  # what quote_plus leaves as it is
_T = TypeVar("_T")


class Plugin(Protocol):
    def create(self, context: RequestContext, items: list[dict]) -> list[dict]: ...
    def get(self, context: RequestContext, id_: str) -> dict: ...
    def list(self, context: RequestContext, query: ListQuery) -> Sequence[dict]: ...
    def update(self, context: RequestContext, id_: str, changes: dict) -> dict: ...
    def delete(self, context: RequestContext, id_: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class Resource:
    """A declaration read once: the attribute map and what the resource allows."""

    name: str
    collection: str
    paths: tuple[str, ...]
    attributes: dict[str, dict[str, Any]]
    operations: frozenset[str]
    allow_bulk: bool
    not_found: type[exceptions.NotFound]
    refusals: dict[str, str]

    @classmethod
    def from_definition(cls, definition: ModuleType,
                        not_found: type[exceptions.NotFound]) -> Resource:
        return cls(
            name=definition.RESOURCE_NAME, collection=definition.COLLECTION_NAME,
            paths=tuple(definition.PATHS),
            attributes=definition.RESOURCE_ATTRIBUTE_MAP[definition.COLLECTION_NAME],
            operations=frozenset(definition.OPERATIONS),
            allow_bulk=getattr(definition, "ALLOW_BULK", False), not_found=not_found,
            refusals=dict(getattr(definition, "REFUSALS", {})))

    @functools.cached_property
    def primary_key(self) -> str:
        return next(n for n, a in self.attributes.items() if a.get("primary_key"))

    @functools.cached_property
    def visible_attributes(self) -> frozenset[str]:
        return frozenset(n for n, a in self.attributes.items() if a.get("is_visible"))

    def visible_all(self, items: Sequence[dict[str, Any]], fields: list[str] | None = None
                    ) -> Sequence[dict[str, Any]] | orjson.Fragment:
        """:meth:`visible` of each item, without a call per row when no row has anything to
        hide (the usual page): the calls were 37 µs of a 336 µs page (bench/profile_app.py).
        A plugin's page may say which keys all its rows have (``row_keys``, a table's
        columns), sparing a look at each row's (11 µs of a page, cProfile), and may come
        as JSON text already (``json_fragment``, db.paging's EncodedPage), which the
        response then carries as it is."""
        keys = getattr(items, "row_keys", None)
        if keys is None:
            keys = itertools.chain.from_iterable(items)  # every row's keys, in one C loop
        if fields or not self.visible_attributes.issuperset(keys):
            return [self.visible(i, fields) for i in items]
        return getattr(items, "json_fragment", items)  # a page the database wrote as JSON

    def visible(self, item: dict[str, Any], fields: list[str] | None = None) -> dict[str, Any]:
        shown = self.visible_attributes
        if not fields and item.keys() <= shown:
            return item  # nothing to hide (a row's own fresh dict): no copy per row
        return {k: v for k, v in item.items() if k in shown and (not fields or k in fields)}


class Controller:
    """Serves one resource: each method returns ``(status, body-or-None)``."""

    def __init__(self, resource: Resource, plugin: Plugin, authorizer: Authorizer,
                 link_prefix: str | None = None, max_limit: int = -1) -> None:
        self.resource = resource
        self.plugin = plugin
        self.authorizer = authorizer
        self.link_prefix = link_prefix
        self.max_limit = max_limit

    # -- policy ------------------------------------------------------------------------------
    def _allowed(self, action: str, context: RequestContext) -> bool:
        return self.authorizer.allowed(f"{action}_{self.resource.name}",
                                       context.credentials())

    def _authorize(self, action: str, context: RequestContext, id_: str | None = None) -> None:
        """Admin-only resources hide existence: without read access a member is a 404."""
        if id_ is not None and not self._allowed("get", context):
            raise self.resource.not_found(id=id_)
        if action != "get" and not self._allowed(action, context):
            raise exceptions.PolicyNotAuthorized(action=f"{action}_{self.resource.name}")

    # -- operations ----------------------------------------------------------------------------
    def index(self, req: webob.Request, context: RequestContext) -> tuple[int, dict]:
        query, fields = self._list_query(req)
        items = self.plugin.list(context, query) if self._allowed("get", context) else []
        body: dict[str, Any] = {self.resource.collection: self.resource.visible_all(items,
                                                                                   fields)}
        if query.limit:
            body[f"{self.resource.collection}_links"] = self._links(req, items, query)
        return 200, body

    def show(self, req: webob.Request, context: RequestContext, id_: str) -> tuple[int, dict]:
        self._authorize("get", context, id_)
        item = self.plugin.get(context, self._member_id(id_))
        fields = (_fields(req.GET.dict_of_lists()) if req.environ.get("QUERY_STRING")
                  else None)
        return 200, {self.resource.name: self.resource.visible(item, fields)}

    def create(self, req: webob.Request, context: RequestContext) -> tuple[int, dict]:
        self._authorize("create", context)
        bulk, items = _validated_body(req, self._create_items)
        created = [self.resource.visible(i) for i in self.plugin.create(context, items)]
        if bulk:
            return 201, {self.resource.collection: created}
        return 201, {self.resource.name: created[0]}

    def update(self, req: webob.Request, context: RequestContext, id_: str) -> tuple[int, dict]:
        self._authorize("update", context, id_)
        changes = _validated_body(req, self._update_changes)
        item = self.plugin.update(context, self._member_id(id_), changes)
        return 200, {self.resource.name: self.resource.visible(item)}

    def delete(self, req: webob.Request, context: RequestContext, id_: str) -> tuple[int, None]:
        self._authorize("delete", context, id_)
        self.plugin.delete(context, self._member_id(id_))
        return 204, None

    # -- request bodies ------------------------------------------------------------------------
    def _member_id(self, id_: str) -> str:
        """The id as stored; an id that cannot exist is simply not found."""
        attr = self.resource.attributes[self.resource.primary_key]
        if validation_error(attr, id_) is not None:
            raise self.resource.not_found(id=id_)
        return _convert(attr, id_)

    def _create_items(self, body: Any) -> tuple[bool, list[dict]]:
        res, coll = self.resource.name, self.resource.collection
        _only_keys(body, {res, coll} if self.resource.allow_bulk else {res})
        if coll in body:
            items = body[coll]
            if not isinstance(items, list) or not items:
                raise exceptions.BadRequest(
                    resource=res, msg=f"'{coll}' must be a non-empty list of objects")
            return True, [self._create_attributes(item) for item in items]
        return False, [self._create_attributes(body[res])]

    def _create_attributes(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise exceptions.BadRequest(resource=self.resource.name,
                                        msg=f"'{self.resource.name}' must be an object")
        self._refuse_unknown(data, "allow_post", "Attribute '%s' is not allowed in POST")
        result = {}
        for name, attr in self.resource.attributes.items():
            if not attr.get("allow_post"):
                continue
            if name not in data:
                if attr.get("required"):
                    raise exceptions.BadRequest(
                        resource=self.resource.name,
                        msg=f"Failed to parse request. Required attribute '{name}' not "
                            "specified")
                if "default" in attr:
                    result[name] = attr["default"]
                continue
            result[name] = self._checked(name, attr, data[name])
        return _one_owner(self.resource.name, result)

    def _update_changes(self, body: Any) -> dict[str, Any]:
        _only_keys(body, {self.resource.name})
        data = body[self.resource.name]
        if not isinstance(data, dict) or not data:
            raise exceptions.BadRequest(
                resource=self.resource.name,
                msg=f"'{self.resource.name}' must be an object with attributes to update")
        self._refuse_unknown(data, "allow_put", "Cannot update read-only attribute %s")
        return {name: self._checked(name, self.resource.attributes[name], value)
                for name, value in data.items()}

    def _refuse_unknown(self, data: dict, flag: str, read_only_message: str) -> None:
        unknown = sorted(k for k in data if k not in self.resource.attributes)
        if unknown:
            raise exceptions.BadRequest(
                resource=self.resource.name,
                msg="Unrecognized attribute(s) '{}'".format(", ".join(unknown)))
        for name in data:
            attr = self.resource.attributes[name]
            if not attr.get(flag):
                raise exceptions.BadRequest(resource=self.resource.name,
                                            msg=attr.get("put_refusal", read_only_message % name))

    def _checked(self, name: str, attr: dict, value: Any) -> Any:
        error = validation_error(attr, value)
        if error is not None:
            raise exceptions.InvalidInput(f"Invalid input for {name}. Reason: {error}.")
        return _convert(attr, value)

    # -- list queries --------------------------------------------------------------------------
    def _list_query(self, req: webob.Request) -> tuple[ListQuery, list[str] | None]:
        """The query string read once, as lists of values by name (webob's ``get`` and
        ``getall`` each scan every parameter in Python: a page read them seven times)."""
        params = req.GET.dict_of_lists()
        limit = self._limit(params)
        # Neutron (api_common.get_page_reverse): "true" in any case reverses; any other
        # value, even "1" or "yes", does not, and none is refused.
        page_reverse = _last(params, "page_reverse", "False").lower() == "true"
        marker = _last(params, "marker") if limit else None
        if marker:  # an empty marker is no marker, as Neutron's ``if limit and marker``
            marker = self._marker(marker)
        else:
            marker = None
        return ListQuery(filters=self._filters(params), sorts=self._sorts(params),
                         limit=limit, marker=marker, page_reverse=page_reverse), \
            _fields(params)

    def _marker(self, marker: str) -> str:
        attr = self.resource.attributes[self.resource.primary_key]
        error = validation_error(attr, marker)
        if error is not None:
            raise exceptions.BadRequest(resource="marker", msg=f"Invalid marker: {error}")
        return _convert(attr, marker)

    def _limit(self, params: dict[str, list[str]]) -> int | None:
        raw = _last(params, "limit", "0")
        try:
            limit = int(raw)
        except ValueError:
            limit = -1
        if limit < 0:
            raise exceptions.BadRequest(
                resource="limit", msg=f"Limit must be an integer 0 or greater and not '{raw}'")
        if self.max_limit > 0:
            limit = min(self.max_limit, limit) or self.max_limit
        return min(limit, MAX_SQL_LIMIT) or None

    def _sorts(self, params: dict[str, list[str]]) -> list[tuple[str, bool]]:
        # Empty values are dropped before pairing (Neutron's api_common.list_args).
        keys = [k for k in params.get("sort_key", ()) if k]
        dirs = [d for d in params.get("sort_dir", ()) if d]
        if len(keys) != len(dirs):
            raise exceptions.BadRequest(resource="sort",
                                        msg="The number of sort_keys and sort_dirs must be same")
        unknown = [k for k in keys if not self.resource.attributes.get(k, {}).get("is_sort_key")]
        if unknown:
            raise exceptions.BadRequest(resource="sort",
                                        msg=f"{unknown} is invalid attribute for sort_keys")
        bad_dirs = [d for d in dirs if d not in ("asc", "desc")]
        if bad_dirs:
            raise exceptions.BadRequest(
                resource="sort",
                msg=f"{bad_dirs} is invalid value for sort_dirs, valid value is 'asc' and 'desc'")
        return [(k, d == "asc") for k, d in zip(keys, dirs, strict=True)]

    def _filters(self, params: dict[str, list[str]]) -> dict[str, list[Any]]:
        filters: dict[str, list[Any]] = {}
        invalid = []
        for name, values in params.items():
            if name in RESERVED_QUERY_PARAMS:
                continue
            attr = self.resource.attributes.get(name)
            if not attr or not attr.get("is_filter"):
                invalid.append(name)
                continue
            values = [v for v in values if v]
            if values:
                # A value the attribute's validator refuses cannot match a stored row: it
                # is left out rather than sent to the database (PostgreSQL refuses NUL
                # characters; MariaDB's PAD SPACE collation would match 'A ' to 'A').
                # With no value left, the filter matches nothing.
                filters[name] = [_convert_filter(attr, v) for v in values
                                 if validation_error(attr, v) is None]
        if invalid:
            raise exceptions.BadRequest(resource="filters",
                                        msg=f"{sorted(invalid)} is invalid attribute for filtering")
        return filters

    def _links(self, req: webob.Request, items: Sequence[dict],
               query: ListQuery) -> list[dict]:
        """Neutron's next/previous links (``neutron.api.api_common.get_pagination_links``):
        the request's query without ``marker`` and ``page_reverse``, then the edge row's id
        as ``marker``, then ``page_reverse=True`` for the previous page. The base and the
        kept part are built once for both links (they were a tenth of a page's Python), and
        each is remembered for the next page of the same collection and query: the base
        per host and path, the kept part per kept parameters (WebOb's ``path_url`` and
        ``urlencode`` were a fifth of a SQLite page's own Python, cProfile).

        As Neutron's (``api_common.get_path_url`` and ``prepare_url``): the scheme is the
        ``X-Forwarded-Proto`` header's when a proxy sent one, and a configured
        ``network_link_prefix`` replaces scheme and host both."""
        environ = req.environ
        base = (self.link_prefix.rstrip("/") + req.path if self.link_prefix else _page_url(
            environ.get("wsgi.url_scheme"), environ.get("HTTP_HOST"),
            environ.get("SERVER_NAME"), environ.get("SERVER_PORT"),
            environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", ""),
            environ.get("HTTP_X_FORWARDED_PROTO")))
        kept = _kept_query(tuple((k, v) for k, v in req.GET.items()
                                 if k not in ("marker", "page_reverse")))

        def link(marker: str | None, reverse: bool) -> str:
            parts = [kept] if kept else []
            if marker is not None:  # quoted as urlencode quotes a value (a UUID needs none)
                parts.append("marker=" + (marker if _UNRESERVED.fullmatch(marker)
                                          else urllib.parse.quote_plus(marker)))
            if reverse:
                parts.append("page_reverse=True")
            return f"{base}?{'&'.join(parts)}"

        links = []
        first, last = self._edge_ids(items)
        short = len(items) < (query.limit or 0)
        if not (short and not query.page_reverse):
            links.append({"rel": "next", "href": link(last, reverse=False)})
        if not (short and query.page_reverse):
            links.append({"rel": "previous", "href": link(first, reverse=True)})
        return links

    def _edge_ids(self, items: Sequence[dict]) -> tuple[str | None, str | None]:
        """The first and last rows' ids; a page the database wrote as JSON names them
        (``edge_ids``) without being parsed."""
        edges = getattr(items, "edge_ids", None)
        if edges is not None or not items:
            return edges or (None, None)
        key = self.resource.primary_key
        return str(items[0][key]), str(items[-1][key])


def validation_error(attr: dict, value: Any) -> str | None:
    for name, arg in attr.get("validate", {}).items():
        error = validators.VALIDATORS[name](value, arg)
        if error is not None:
            return error
    return None


def _one_owner(resource: str, item: dict[str, Any]) -> dict[str, Any]:
    """``tenant_id`` and ``project_id`` are one value under two names (neutron_lib's
    ``populate_project_info``): either may be sent, both only when they agree."""
    if "project_id" in item and "tenant_id" in item:
        if item["project_id"] != item["tenant_id"]:
            raise exceptions.BadRequest(resource=resource,
                                        msg="'project_id' and 'tenant_id' do not match")
    elif "project_id" in item:
        item["tenant_id"] = item["project_id"]
    elif "tenant_id" in item:
        item["project_id"] = item["tenant_id"]
    return item


def _convert(attr: dict, value: Any) -> Any:
    convert = attr.get("convert_to")
    return convert(value) if convert else value


def _convert_filter(attr: dict, value: str) -> Any:
    """Filters are converted like bodies but never rejected: a bad value matches nothing."""
    try:
        return _convert(attr, value)
    except (ValueError, TypeError):
        return value


@functools.lru_cache(maxsize=256)
def _page_url(scheme: str, host: str | None, server_name: str | None, port: str | None,
              script_name: str, path_info: str, forwarded_proto: str | None = None) -> str:
    """WebOb's ``path_url`` of a request with these environ values, its scheme the
    ``X-Forwarded-Proto`` header's (:func:`forwarded_url`)."""
    return forwarded_url(webob.Request({
        "wsgi.url_scheme": scheme, "HTTP_HOST": host, "SERVER_NAME": server_name,
        "SERVER_PORT": port, "SCRIPT_NAME": script_name, "PATH_INFO": path_info}).path_url,
        scheme, forwarded_proto)


def forwarded_url(url: str, scheme: str, forwarded_proto: str | None) -> str:
    """``url`` (WebOb's, which begins with ``scheme://``) with the scheme a proxy named in
    ``X-Forwarded-Proto``, as Neutron's ``api_common.get_path_url`` makes it: the host and
    port stay the request's own (``Host``), only the scheme is replaced."""
    if forwarded_proto and forwarded_proto != scheme:
        return forwarded_proto + url[len(scheme):]
    return url


@functools.lru_cache(maxsize=256)
def _kept_query(params: tuple[tuple[str, str], ...]) -> str:
    return urllib.parse.urlencode(params)


def _fields(params: dict[str, list[str]]) -> list[str] | None:
    fields = [f for f in params.get("fields", ()) if f]
    return fields or None


def _last(params: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    """The last value of a repeated parameter, as webob's ``MultiDict.get``."""
    values = params.get(name)
    return values[-1] if values else default


def _json_body(req: webob.Request) -> Any:
    try:
        raw = _read_body(req, req.content_length)
    except (ValueError, OSError):
        # The server could not read what the client sent: a bad chunk size, a body shorter
        # than its Content-Length (the read times out), a dropped connection.
        raise exceptions.BadRequest(resource="body",
                                    msg="The request body could not be read") from None
    if len(raw) > MAX_BODY_BYTES:  # (chunked)
        raise exceptions.RequestEntityTooLarge(limit=MAX_BODY_BYTES)
    if not raw.strip():
        raise exceptions.BadRequest(resource="body", msg="Resource body required")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
        raise exceptions.BadRequest(resource="body", msg="Malformed request body") from None


def _read_body(req: webob.Request, length: int | None) -> bytes:
    """The body, read straight from the server's input when its length was announced:
    WSGI lets an app read that much, and both servers' inputs (cheroot's, gunicorn's)
    return it whole, waiting for a slow client. webob's ``body_file`` wraps the input in
    a new length-limited, buffered reader for every request (an 8 KiB buffer; 9 of a
    create's 110 µs of Python, cProfile). A body that ends before its announced length is
    an error, as webob's wrapper makes it.

    At most the announced length (a larger one never gets here): a read of the limit
    allocates and zeroes the limit, 1 MiB, for every request (30 µs of a create's ~250).
    Chunked, nothing is announced: up to one byte over the limit, to tell it was over."""
    if not length:
        return req.body_file.read(MAX_BODY_BYTES + 1)  # chunked (or none): webob's rules
    raw = req.environ["wsgi.input"].read(length)
    if len(raw) < length:
        raise OSError(f"the body ended after {len(raw)} of {length} bytes")
    return raw


def _validated_body(req: webob.Request, validate: Callable[[Any], _T]) -> _T:
    """``validate`` of the request's JSON body, its refusal replaced when it echoes text
    that is not valid Unicode (:func:`_refuse_invalid_unicode`)."""
    body = _json_body(req)
    try:
        return validate(body)
    except exceptions.BadRequest as exc:
        _refuse_invalid_unicode(exc)
        raise


def _refuse_invalid_unicode(refusal: exceptions.BadRequest) -> None:
    """Say so when a body is refused for text that is not valid Unicode.

    JSON's ``\\uXXXX`` escapes (and Python's decoder of UTF-8 bytes) let a lone UTF-16
    surrogate through, which no database driver takes and orjson cannot encode. Every
    attribute a body may set has a validator that refuses such text (tests/unit/
    test_validators.py checks the declarations), so a body holding any is refused; a
    refusal that echoes it (``'\\ud800' is not a valid UUID``, an unknown attribute's
    name) could not be sent, and this one, naming the reason, replaces it. Only a refusal
    is looked at: an accepted request pays nothing."""
    if not validators.is_unicode_text(refusal.msg):
        raise exceptions.BadRequest(
            resource="body", msg="The request body holds text that is not valid Unicode "
            "(a lone UTF-16 surrogate, \\ud800 to \\udfff)") from None


def _only_keys(body: Any, allowed: set[str]) -> None:
    if not isinstance(body, dict):
        raise exceptions.BadRequest(resource="body",
                                    msg="Request body must be a JSON object")
    present = set(body) & allowed
    if not present:
        names = " or ".join(f"'{k}'" for k in sorted(allowed))
        raise exceptions.BadRequest(resource="body",
                                    msg=f"Unable to find {names} in request body")
    extra = sorted(set(body) - allowed)
    if extra or len(present) > 1:
        raise exceptions.BadRequest(
            resource="body", msg="Unrecognized key(s) in request body: "
            + ", ".join(f"'{k}'" for k in (extra or sorted(present))))
