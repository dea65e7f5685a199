"""The HTTP client the ``neutron`` commands share: endpoint and auth resolution, errors.

Endpoint and credentials come, in order, from ``--os-url`` + ``--os-token`` (OS_URL,
OS_TOKEN); from Keystone when an auth URL is set (OS_AUTH_URL and friends; the endpoint is
the catalog's ``network`` service unless ``--os-url`` overrides it); or from the local
all-in-one's state directory (``api-url`` and ``admin-token``), so that on the machine that
runs the all-in-one ``neutron agent-membership-list`` works with no setup at all.

Every failure becomes an :class:`ApiError` whose message is the one to show the user: the
server's NeutronError message, or one line naming the URL that could not be reached.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import loading, session, token_endpoint

from midonet_membership.cli.app import CommandError

DEFAULT_URL = "http://127.0.0.1:9696"
API_VERSION = "v2.0"
# keystoneauth's generic "password" and "token" plugins accept these (None = not given).
KEYSTONE_OPTIONS = ("auth_url", "username", "user_id", "password", "token", "project_name",
                    "project_id", "user_domain_name", "user_domain_id",
                    "project_domain_name", "project_domain_id")


class ApiError(CommandError):
    """The request failed; ``status`` is the HTTP status, 0 when no answer came back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def pages(get: Callable[[list[tuple[str, str]]], dict], plural: str,
          query: list[tuple[str, str]], rel: str = "next") -> Iterator[list[dict]]:
    """The pages of a list: ``get(query)``'s, then each page whose query the ``<plural>_links``
    href named ``rel`` gives, until a page is empty or links none. The href's host is not
    followed: behind a proxy it may name an address this client cannot reach, and
    neutronclient ignores it too."""
    while True:
        body = get(query)
        page = body[plural]
        yield page
        href = next((link.get("href") for link in body.get(f"{plural}_links", [])
                     if link.get("rel") == rel), None)
        if not page or href is None:
            return
        following = urllib.parse.parse_qsl(urllib.parse.urlsplit(href).query)
        if following == query:  # a server that never advances must not loop forever
            return
        query = following


@dataclasses.dataclass(frozen=True)
class Resource:
    """How one resource is spelt on the wire (``path`` under /v2.0, body keys)."""

    path: str
    singular: str
    plural: str


class Client:
    """Neutron's v2.0 wire protocol over one keystoneauth session."""

    def __init__(self, sess: session.Session, endpoint: str | None = None,
                 endpoint_filter: dict[str, Any] | None = None,
                 auth_url: str | None = None) -> None:
        self.session = sess
        self._endpoint = endpoint
        self._endpoint_filter = endpoint_filter or {}
        self.auth_url = auth_url

    @property
    def endpoint(self) -> str:
        """The API root without ``/v2.0``; looked up in the catalog at the first request."""
        if self._endpoint is None:
            try:
                found = self.session.get_endpoint(**self._endpoint_filter)
            except ks_exceptions.EndpointNotFound:
                found = None
            except ks_exceptions.ClientException as exc:
                raise _keystone_error(exc, self.auth_url) from None
            if not found:
                wanted = {k: v for k, v in self._endpoint_filter.items() if k != "service_type"}
                raise ApiError(0, "No 'network' endpoint in the Keystone catalog for "
                                  + ", ".join(f"{k} {v}" for k, v in sorted(wanted.items())))
            self._endpoint = found
        return _api_root(self._endpoint)

    # -- the resource calls the commands use ----------------------------------------------------
    def list(self, resource: Resource, page_size: int | None = None,
             params: list[tuple[str, str]] | None = None) -> list[dict]:
        """Every item, paged like python-neutronclient's ``list(..., page_size)``.

        With a page size it asks for ``limit=SIZE``. With or without one it follows every
        page (:func:`pages`) and concatenates them: a server with ``pagination_max_limit``
        caps every answer and links the rest.
        """
        query = list(params or [])
        if page_size:
            query.append(("limit", str(page_size)))
        return [item for page in pages(
            lambda q: self.request("GET", resource.path, params=q), resource.plural, query)
            for item in page]

    def show(self, resource: Resource, id_: str) -> dict:
        return self.request("GET", _member(resource, id_))[resource.singular]

    def create(self, resource: Resource, attributes: dict[str, Any]) -> dict:
        return self.request("POST", resource.path,
                            {resource.singular: attributes})[resource.singular]

    def update(self, resource: Resource, id_: str, attributes: dict[str, Any]) -> dict:
        return self.request("PUT", _member(resource, id_),
                            {resource.singular: attributes})[resource.singular]

    def delete(self, resource: Resource, id_: str) -> None:
        self.request("DELETE", _member(resource, id_))

    # -- one request ------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None,
                params: list[tuple[str, str]] | None = None) -> Any:
        """Send one request to ``<endpoint>/v2.0/<path>``; the decoded body, or ApiError."""
        url = f"{self.endpoint}/{API_VERSION}/{path}"
        kwargs: dict[str, Any] = {"raise_exc": False, "connect_retries": 0}
        if body is not None:
            kwargs["json"] = body
        if params:
            kwargs["params"] = params
        try:
            resp = self.session.request(url, method, **kwargs)
        except ks_exceptions.ConnectTimeout:
            raise ApiError(0, f"No answer from the API at {self.endpoint} within "
                              f"{self.session.timeout} s") from None
        except ks_exceptions.SSLError as exc:
            raise ApiError(0, f"TLS failure talking to {self.endpoint}: {exc}") from None
        except ks_exceptions.ConnectionError as exc:
            raise ApiError(0, f"Unable to connect to the API at {self.endpoint} "
                              f"({_reason(exc)}): is the server running?") from None
        except ks_exceptions.ClientException as exc:
            raise _keystone_error(exc, self.auth_url) from None
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, _error_message(resp))
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError(resp.status_code, f"{method} {url} answered {resp.status_code} "
                                             "with a body that is not JSON") from None


def _member(resource: Resource, id_: str) -> str:
    return f"{resource.path}/{urllib.parse.quote(id_, safe='')}"


def _api_root(endpoint: str) -> str:
    """Catalogs list Neutron with or without the version suffix; accept both."""
    root = endpoint.rstrip("/")
    return root.removesuffix(f"/{API_VERSION}")


def _error_message(resp: Any) -> str:
    try:
        return str(resp.json()["NeutronError"]["message"])
    except (ValueError, KeyError, TypeError):
        text = " ".join(resp.text.split())[:200]
        return f"{resp.status_code} {resp.reason}" + (f": {text}" if text else "")


def _reason(exc: Exception) -> str:
    """The socket-level reason buried in urllib3's message, e.g. 'Connection refused'."""
    found = re.search(r"\[Errno -?\d+\] ([^\"')]+)", str(exc))
    return found.group(1).strip() if found else "connection failed"


def _keystone_error(exc: ks_exceptions.ClientException, auth_url: str | None) -> ApiError:
    status = getattr(exc, "http_status", None) or 0
    if isinstance(exc, ks_exceptions.ConnectionError):
        return ApiError(0, f"Unable to connect to Keystone at {auth_url} ({_reason(exc)})")
    return ApiError(status, f"Keystone: {exc}")


# -- choosing the endpoint and credentials ---------------------------------------------------
def make_client(*, os_url: str | None, os_token: str | None, state_dir: str | None,
                admin_token_file: str | None = None,
                keystone: Mapping[str, str | None] | None = None, interface: str = "public",
                region_name: str | None = None, timeout: float | None = None,
                verify: bool | str = True) -> Client:
    """The client for the first source of credentials that is given (see the module doc)."""
    keystone = {k: v for k, v in (keystone or {}).items() if v}
    if os_url and os_token:
        auth = token_endpoint.Token(os_url, os_token)
        return Client(session.Session(auth=auth, timeout=timeout, verify=verify), os_url)
    if keystone.get("auth_url"):
        if os_token:
            keystone.setdefault("token", os_token)
        auth = _keystone_auth(keystone)
        endpoint_filter = {"service_type": "network", "interface": interface}
        if region_name:
            endpoint_filter["region_name"] = region_name
        return Client(session.Session(auth=auth, timeout=timeout, verify=verify), os_url,
                      endpoint_filter, keystone["auth_url"])
    url, token = local_all_in_one(state_dir, need_token=not os_token,
                                  token_file=admin_token_file)
    auth = token_endpoint.Token(os_url or url, os_token or token)
    return Client(session.Session(auth=auth, timeout=timeout, verify=verify), os_url or url)


def local_all_in_one(state_dir: str | None, need_token: bool = True,
                     token_file: str | None = None) -> tuple[str, str | None]:
    """The URL the all-in-one wrote into its state directory and its admin token.

    The token is read from ``token_file`` (the server's ``admin_token_file``) when given,
    else from ``<state_dir>/admin-token``, the server's default.
    """
    state_dir = os.path.abspath(state_dir or os.environ.get("MIDONET_STATE_DIR") or "var")
    url = _read(os.path.join(state_dir, "api-url")) or DEFAULT_URL
    token_file = os.path.abspath(token_file or os.path.join(state_dir, "admin-token"))
    token = _read(token_file) if need_token else None
    if need_token and not token:
        raise ApiError(0, f"No credentials: {token_file} does not exist. Give --os-url and "
                          "--os-token (OS_URL, OS_TOKEN), set OS_AUTH_URL for Keystone, or "
                          "point --state-dir (MIDONET_STATE_DIR) at the all-in-one's state "
                          "directory.")
    return url, token


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ApiError(0, f"Cannot read {path}: permission denied (it is readable only by "
                          "the user that runs the all-in-one)") from None


def _keystone_auth(options: dict[str, str]) -> Any:
    """keystoneauth's generic password or token plugin (it discovers v2/v3 itself)."""
    method = "password" if options.get("password") else "token"
    if method == "token" and not options.get("token"):
        raise ApiError(0, "OS_AUTH_URL is set but neither a password (OS_PASSWORD) nor a "
                          "token (OS_TOKEN) is given")
    if method == "password":
        options.pop("token", None)
        if not options.get("user_domain_id"):
            options.setdefault("user_domain_name", "Default")
    else:
        for key in ("username", "user_id", "password", "user_domain_name", "user_domain_id"):
            options.pop(key, None)
    if (options.get("project_name") and not options.get("project_domain_id")):
        options.setdefault("project_domain_name", "Default")
    try:
        return loading.get_plugin_loader(method).load_from_options(**options)
    except ks_exceptions.ClientException as exc:
        raise ApiError(0, f"Keystone credentials: {exc}") from None
