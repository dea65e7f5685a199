"""``neutron``: the spec's agent-membership commands, and agent-list/-show/-update.

Options and output follow python-neutronclient's (``-P``, repeatable ``--sort-key`` and
``--sort-dir``, "Created a new ...", "Deleted ...(s): ..."), so the spec's session reads the
same. Each command calls the client and returns cliff's tuples; cliff formats them (table,
json, yaml, value, csv) and turns an ApiError into ``Error: <message>`` and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from cliff.command import Command
from cliff.lister import Lister
from cliff.show import ShowOne
from oslo_config import cfg

from midonet_membership import conf as config
from midonet_membership.cli.app import BaseApp, CommandError, column
from midonet_membership.cli.client import (
    KEYSTONE_OPTIONS,
    ApiError,
    Client,
    Resource,
    make_client,
)

MEMBERSHIPS = Resource("agent-memberships", "agent_membership", "agent_memberships")
AGENTS = Resource("agents", "agent", "agents")
MEMBERSHIP_COLUMNS = ("id", "ip_address")
AGENT_COLUMNS = ("id", "agent_type", "binary", "host", "alive", "heartbeat_timestamp",
                 "description", "member", "tunnel_ip_address", "state", "tunnels",
                 "admission_drops")


def _show(item: dict[str, Any]) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    columns = tuple(sorted(item))
    return columns, tuple(column(item[c]) for c in columns)


def _sort_params(keys: list[str], dirs: list[str]) -> list[tuple[str, str]]:
    """Pair directions with keys as neutronclient does: missing ones asc, extra ones dropped."""
    dirs = (dirs + ["asc"] * len(keys))[:len(keys)]
    return [("sort_key", k) for k in keys] + [("sort_dir", d) for d in dirs]


class _ClientCommand(Command):
    @property
    def client(self) -> Client:
        return self.app.client


class _ListCommand(_ClientCommand, Lister):
    resource: Resource
    columns: tuple[str, ...] = ()

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("-P", "--page-size", type=int, metavar="SIZE",
                            help="Specify retrieve unit of each request, then split one "
                                 "request into several requests")
        parser.add_argument("--sort-key", action="append", default=[], metavar="FIELD",
                            help="Sorts the list by the specified fields (repeatable; "
                                 "missing --sort-dir values are asc)")
        parser.add_argument("--sort-dir", action="append", default=[],
                            choices=["asc", "desc"],
                            help="Sorts the list in the specified direction (repeatable)")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, list[tuple]]:
        items = self.client.list(self.resource, parsed.page_size,
                                 _sort_params(parsed.sort_key, parsed.sort_dir))
        return self.columns, [tuple(column(i.get(c)) for c in self.columns) for i in items]


class AgentMembershipList(_ListCommand):
    """List agent memberships (the activated MidoNet agents)."""

    resource, columns = MEMBERSHIPS, MEMBERSHIP_COLUMNS


class AgentMembershipShow(_ClientCommand, ShowOne):
    """Show an agent membership."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("agent_membership", metavar="AGENT_MEMBERSHIP",
                            help="ID of the agent membership to look up")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, tuple]:
        return _show(self.client.show(MEMBERSHIPS, parsed.agent_membership))


class AgentMembershipCreate(_ClientCommand, ShowOne):
    """Add an agent to the MidoNet deployment membership (activate it)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("-a", "--agent-id", required=True, metavar="AGENT",
                            help="Specify the ID of the agent to add to membership")
        parser.add_argument("--ip-address", required=True, metavar="IP_ADDRESS",
                            help="Set IP address to use for tunneling")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, tuple]:
        created = self.client.create(MEMBERSHIPS, {"id": parsed.agent_id,
                                                   "ip_address": parsed.ip_address})
        if parsed.formatter == "table":  # as neutronclient; json/yaml stay parseable
            print("Created a new agent_membership:", file=self.app.stdout)
        return _show(created)


class AgentMembershipDelete(_ClientCommand):
    """Remove agents from the MidoNet deployment membership (their tunnels go away)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("agent_memberships", nargs="+", metavar="AGENT_MEMBERSHIP",
                            help="ID(s) of the agent membership(s) to remove")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> int:
        deleted, failed = [], []
        for id_ in parsed.agent_memberships:
            try:
                self.client.delete(MEMBERSHIPS, id_)
                deleted.append(id_)
            except ApiError as exc:
                if exc.status == 0 and not deleted and not failed:  # nothing reachable
                    raise
                failed.append(f"Failed to delete agent_membership {id_}: {exc}")
        if deleted:
            print(f"Deleted agent_membership(s): {', '.join(deleted)}", file=self.app.stdout)
        if failed:
            raise CommandError("\n".join(failed))
        return 0


class AgentList(_ListCommand):
    """List MidoNet agents with their liveness and membership."""

    resource, columns = AGENTS, AGENT_COLUMNS


class AgentShow(_ClientCommand, ShowOne):
    """Show a MidoNet agent, its interfaces and its membership."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("agent", metavar="AGENT", help="ID of the agent")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> tuple[tuple, tuple]:
        return _show(self.client.show(AGENTS, parsed.agent))


class AgentUpdate(_ClientCommand):
    """Update a MidoNet agent's description (its only updatable attribute)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("agent", metavar="AGENT", help="ID of the agent")
        parser.add_argument("--description", required=True, help="Description of the agent")
        return parser

    def take_action(self, parsed: argparse.Namespace) -> int:
        self.client.update(AGENTS, parsed.agent, {"description": parsed.description})
        print(f"Updated agent: {parsed.agent}", file=self.app.stdout)
        return 0


COMMANDS: dict[str, type[Command]] = {
    "agent-membership-list": AgentMembershipList,
    "agent-membership-show": AgentMembershipShow,
    "agent-membership-create": AgentMembershipCreate,
    "agent-membership-delete": AgentMembershipDelete,
    "agent-list": AgentList,
    "agent-show": AgentShow,
    "agent-update": AgentUpdate,
}


class NeutronApp(BaseApp):
    """``neutron``: python-neutronclient's global options that matter here."""

    def __init__(self) -> None:
        super().__init__("MidoNet agent membership and agents (Neutron API)",
                         "midonet_membership.neutron", COMMANDS)
        self._client: Client | None = None

    def build_option_parser(self, description: str, version: str,
                            argparse_kwargs: dict | None = None) -> argparse.ArgumentParser:
        parser = super().build_option_parser(description, version, argparse_kwargs)
        env = os.environ.get
        parser.add_argument("--os-url", default=env("OS_URL"),
                            help="API endpoint, e.g. http://127.0.0.1:9696 (env OS_URL); "
                                 "overrides the Keystone catalog")
        parser.add_argument("--os-token", default=env("OS_TOKEN"),
                            help="Authentication token (env OS_TOKEN)")
        for name in KEYSTONE_OPTIONS:
            if name != "token":
                flag = name.replace("_", "-")
                # python-neutronclient's v2-era spellings of the project (old openrc files)
                old = {"project_name": "tenant_name", "project_id": "tenant_id"}.get(name)
                flags = [f"--os-{flag}"] + ([f"--os-{old.replace('_', '-')}"] if old else [])
                parser.add_argument(*flags, dest=f"os_{name}",
                                    default=env(f"OS_{name.upper()}") or (
                                        env(f"OS_{old.upper()}") if old else None),
                                    help=f"Keystone {name.replace('_', ' ')} "
                                         f"(env OS_{name.upper()}"
                                         + (f", or OS_{old.upper()})" if old else ")"))
        parser.add_argument("--os-interface", default=env("OS_INTERFACE", "public"),
                            help="Catalog interface with Keystone (env OS_INTERFACE)")
        parser.add_argument("--os-region-name", default=env("OS_REGION_NAME"),
                            help="Catalog region with Keystone (env OS_REGION_NAME)")
        parser.add_argument("--os-cacert", default=env("OS_CACERT"),
                            help="CA bundle to verify TLS servers (env OS_CACERT)")
        parser.add_argument("--insecure", action="store_true",
                            help="Do not verify TLS certificates")
        parser.add_argument("--http-timeout", type=float, default=60.0, metavar="SECONDS",
                            help="Give up on a request after this long (default 60)")
        parser.add_argument("--state-dir", default=None,
                            help="The local all-in-one's state directory, used when no "
                                 "endpoint is given (default $MIDONET_STATE_DIR or ./var)")
        parser.add_argument("--config-file", action="append", default=[],
                            help="The server's neutron.conf-style file (repeatable): its "
                                 "state_dir and admin_token_file locate the local server "
                                 "and its admin token")
        parser.add_argument("--admin-token-file", default=env("MIDONET_ADMIN_TOKEN_FILE"),
                            help="The server's admin token file (env "
                                 "MIDONET_ADMIN_TOKEN_FILE; default: the config file's "
                                 "admin_token_file, else STATE_DIR/admin-token)")
        return parser

    def _local_server(self) -> tuple[str | None, str | None]:
        """State dir and token file, from the options or the server's own config file."""
        o = self.options
        if not o.config_file:
            return o.state_dir, o.admin_token_file
        conf = cfg.ConfigOpts()
        try:
            config.load([a for f in o.config_file for a in ("--config-file", f)], conf)
        except (config.ConfigError, cfg.Error) as exc:
            raise CommandError(str(exc)) from None
        if o.state_dir:
            conf.set_override("state_dir", o.state_dir)
        return conf.state_dir, o.admin_token_file or conf.admin_token_file

    def configure_logging(self) -> None:
        super().configure_logging()
        if self.options.verbose_level < 2:  # keystoneauth's discovery warnings only with -v
            for name in ("keystoneauth", "keystoneauth1"):
                logging.getLogger(name).setLevel(logging.ERROR)

    @property
    def client(self) -> Client:
        """Built at the first command that needs it, so ``help`` works with no server."""
        if self._client is None:
            o = self.options
            state_dir, token_file = self._local_server()
            self._client = make_client(
                os_url=o.os_url, os_token=o.os_token, state_dir=state_dir,
                admin_token_file=token_file,
                keystone={name: getattr(o, f"os_{name}") for name in KEYSTONE_OPTIONS},
                interface=o.os_interface, region_name=o.os_region_name,
                timeout=o.http_timeout,
                verify=False if o.insecure else (o.os_cacert or True))
        return self._client


def main(argv: list[str] | None = None) -> int:
    return NeutronApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
