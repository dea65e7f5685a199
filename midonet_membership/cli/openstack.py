"""``openstack network agent membership list/show/create/delete``: the OpenStack client plugin.

Loaded by python-openstackclient through the ``openstack.cli.extension`` entry point; the
commands are ``openstack.midonet_membership.v2`` entry points. They talk to the ``network``
endpoint of the Keystone catalog (neutron-server with our service plugin, or our own server
registered there), or, with ``--os-auth-type admin_token --os-endpoint URL --os-token T``, to
an endpoint given directly (our all-in-one's generated admin token). Output formats (table,
json, yaml, value, csv), column selection and client-side sorting are cliff's.
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from keystoneauth1 import exceptions as ksa_exceptions
from osc_lib import exceptions
from osc_lib.command import command

from midonet_membership.cli.client import pages

API_NAME = "midonet_membership"
API_VERSION_OPTION = "os_midonet_membership_api_version"
DEFAULT_API_VERSION = "2"
API_VERSIONS = {"2": "midonet_membership.cli.openstack.MembershipClient"}
COLUMNS = ("id", "ip_address")
HEADINGS = ("ID", "IP Address")
PATH = "/v2.0/agent-memberships"


class MembershipClient:
    """The agent-memberships resource of one network endpoint, over the OSC session."""

    def __init__(self, session, endpoint: str) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/").removesuffix("/v2.0")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            resp = self.session.request(self.endpoint + path, method, json=body,
                                        headers={"Accept": "application/json"})
        except ksa_exceptions.HttpError as exc:
            raise exceptions.CommandError(_message(exc)) from None
        return resp.json() if resp.content else None

    def list(self, query: list[tuple[str, str]], one_page: bool = False) -> list[dict]:
        """One page, or every page: a server with ``pagination_max_limit`` caps each answer
        and links the rest (``next``; ``previous`` when listing backwards)."""
        def get(q: list[tuple[str, str]]) -> dict:
            return self._call("GET", PATH + (f"?{urllib.parse.urlencode(q)}" if q else ""))

        if one_page:
            return get(query)["agent_memberships"]
        backwards = ("page_reverse", "True") in query
        found = list(pages(get, "agent_memberships", query,
                           "previous" if backwards else "next"))
        return [item for page in (reversed(found) if backwards else found) for item in page]

    def show(self, id_: str) -> dict:
        return self._call("GET", f"{PATH}/{urllib.parse.quote(id_, safe='')}")[
            "agent_membership"]

    def create(self, attributes: dict[str, str]) -> dict:
        return self._call("POST", PATH, {"agent_membership": attributes})["agent_membership"]

    def delete(self, id_: str) -> None:
        self._call("DELETE", f"{PATH}/{urllib.parse.quote(id_, safe='')}")


def _message(exc: ksa_exceptions.HttpError) -> str:
    """The server's NeutronError message, as the `neutron` CLI printed it."""
    try:
        return exc.response.json()["NeutronError"]["message"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{exc.http_status} {exc.message}"


def make_client(instance) -> MembershipClient:
    """OSC's hook: a client for the session's ``network`` endpoint."""
    endpoint = instance.get_endpoint_for_service_type(
        "network", region_name=instance.region_name, interface=instance.interface)
    return MembershipClient(instance.session, endpoint)


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """OSC's hook: global options of this plugin (none besides the API version)."""
    parser.add_argument(f"--{API_VERSION_OPTION.replace('_', '-')}", metavar="<version>",
                        default=DEFAULT_API_VERSION,
                        help="agent-membership API version (default: 2, Neutron's v2.0)")
    return parser


def _sort_pairs(values: list[str]) -> list[tuple[str, str]]:
    """``--sort KEY[:asc|desc]`` (repeatable), like `openstack server list --sort`."""
    pairs = []
    for value in values:
        key, _, direction = value.partition(":")
        if direction not in ("", "asc", "desc"):
            raise exceptions.CommandError(f"--sort {value}: the direction must be asc or desc")
        pairs += [("sort_key", key), ("sort_dir", direction or "asc")]
    return pairs


class ListAgentMembership(command.Lister):
    """List agent memberships (the hosts in the DEFAULT tunnel zone)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--ip-address", action="append", default=[], metavar="<ip>",
                            help="only memberships with this tunnel IP (repeatable)")
        parser.add_argument("--limit", type=int, metavar="<n>",
                            help="at most this many, one page (server-side paging)")
        parser.add_argument("--marker", metavar="<host-id>",
                            help="the page after this membership (with --limit)")
        parser.add_argument("--page-reverse", action="store_true",
                            help="the page before --marker instead of after it")
        parser.add_argument("--sort", action="append", default=[], metavar="<key>[:<dir>]",
                            help="server-side order: id or ip_address, asc (default) or "
                                 "desc; repeatable")
        return parser

    def take_action(self, parsed: argparse.Namespace):
        query = [("ip_address", ip) for ip in parsed.ip_address] + _sort_pairs(parsed.sort)
        if parsed.limit is not None:
            query.append(("limit", str(parsed.limit)))
        if parsed.marker:
            query.append(("marker", parsed.marker))
        if parsed.page_reverse:
            query.append(("page_reverse", "True"))
        items = self.app.client_manager.midonet_membership.list(
            query, one_page=parsed.limit is not None or bool(parsed.marker))
        return HEADINGS, [tuple(item.get(c, "") for c in COLUMNS) for item in items]


class ShowAgentMembership(command.ShowOne):
    """Show one agent membership."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("host_id", metavar="<host-id>", help="the agent's host id")
        return parser

    def take_action(self, parsed: argparse.Namespace):
        item = self.app.client_manager.midonet_membership.show(parsed.host_id)
        return COLUMNS, tuple(item.get(c, "") for c in COLUMNS)


class CreateAgentMembership(command.ShowOne):
    """Activate an agent: add its host to the DEFAULT tunnel zone."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("host_id", metavar="<host-id>", help="the agent's host id")
        parser.add_argument("--ip-address", required=True, metavar="<ip>",
                            help="the host's IPv4 tunnel endpoint")
        parser.add_argument("--project", metavar="<project-id>",
                            help="owner recorded with the task (tenant_id; default: yours)")
        return parser

    def take_action(self, parsed: argparse.Namespace):
        attributes = {"id": parsed.host_id, "ip_address": parsed.ip_address}
        if parsed.project:
            attributes["tenant_id"] = parsed.project
        item = self.app.client_manager.midonet_membership.create(attributes)
        return COLUMNS, tuple(item.get(c, "") for c in COLUMNS)


class DeleteAgentMembership(command.Command):
    """Deactivate agents: remove their hosts from the DEFAULT tunnel zone."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("host_ids", nargs="+", metavar="<host-id>",
                            help="host id(s) to delete")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> None:
        client = self.app.client_manager.midonet_membership
        failed = []
        for host_id in parsed.host_ids:
            try:
                client.delete(host_id)
            except exceptions.CommandError as exc:
                failed.append(f"{host_id}: {exc}")
        if failed:
            raise exceptions.CommandError(
                f"{len(failed)} of {len(parsed.host_ids)} agent memberships failed to delete:"
                "\n" + "\n".join(failed))
