"""`openstack network agent membership ...` (our OSC plugin) against both servers.

python-openstackclient runs from the neutron venv, where this project is installed with its
``openstack.cli.extension`` entry points. neutron-server is found through the real
Keystone's catalog (service type ``network``); our all-in-one through
``--os-auth-type admin_token --os-endpoint`` with its generated admin token.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
import yaml

from tests.fixtures.neutron import VENV, neutron_venv_or_skip
from tests.fixtures.servers import clear_memberships


def _runner(env: dict[str, str], auth_args: list[str]):
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(VENV / "bin" / "openstack"), *auth_args, *args],
                              capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in {**os.environ, **env}.items()
                                   if not (k.startswith("OS_") and k not in env)})
        if check:
            assert done.returncode == 0, (args, done.stdout, done.stderr[-2000:])
        return done
    return run


@pytest.fixture(scope="module", params=["ours", "neutron"])
def openstack(request, start_server_module):
    neutron_venv_or_skip()
    if request.param == "neutron":
        server = request.getfixturevalue("neutron_server")
        keystone = request.getfixturevalue("keystone")
        keystone.register_endpoint("network", server.url)
        run = _runner(keystone.openstack_env("admin"), [])
    else:
        server = start_server_module()
        run = _runner({}, ["--os-auth-type", "admin_token", "--os-endpoint", server.url,
                           "--os-token", server.token])
    clear_memberships(server.database_url)
    return run


@pytest.fixture(scope="module")
def start_server_module(make_database, tmp_path_factory):
    from tests.fixtures.servers import Server
    servers = []

    def start():
        server = Server(tmp_path_factory.mktemp("state"), make_database("sqlite"), {}, [])
        servers.append(server.start())
        return server
    yield start
    for server in servers:
        server.stop()


def test_create_list_show_delete_in_every_format(openstack):
    hosts = sorted(str(uuid.uuid4()) for _ in range(3))
    ips = ["203.0.113.23", "203.0.113.21", "203.0.113.22"]  # not in host order
    for host, ip in zip(hosts, ips, strict=True):
        created = json.loads(openstack("network", "agent", "membership", "create",
                                       "--ip-address", ip, host, "-f", "json").stdout)
        assert created == {"id": host, "ip_address": ip}
    table = openstack("network", "agent", "membership", "list").stdout
    assert "| ID" in table and "IP Address" in table and all(h in table for h in hosts)
    listed = json.loads(openstack("network", "agent", "membership", "list", "-f",
                                  "json").stdout)
    assert listed == [{"ID": h, "IP Address": ip} for h, ip in zip(hosts, ips, strict=True)]
    by_ip = yaml.safe_load(openstack("network", "agent", "membership", "list", "--sort",
                                     "ip_address:desc", "-f", "yaml").stdout)
    assert [m["IP Address"] for m in by_ip] == sorted(ips, reverse=True)
    page = openstack("network", "agent", "membership", "list", "--limit", "1", "--marker",
                     hosts[0], "-f", "value", "-c", "ID").stdout.split()
    assert page == [hosts[1]]
    shown = openstack("network", "agent", "membership", "show", hosts[2], "-f",
                      "value").stdout.split()
    assert shown == [hosts[2], ips[2]]
    openstack("network", "agent", "membership", "delete", hosts[0], hosts[1])
    remaining = openstack("network", "agent", "membership", "list", "-f", "value",
                          "-c", "ID").stdout.split()
    assert remaining == [hosts[2]]
    openstack("network", "agent", "membership", "delete", hosts[2])


def test_errors_carry_the_servers_message(openstack):
    host = str(uuid.uuid4())
    bad = openstack("network", "agent", "membership", "create", "--ip-address", "2001:db8::1",
                    host, check=False)
    assert bad.returncode == 1 and "only IPv4 is supported" in bad.stderr
    missing = openstack("network", "agent", "membership", "delete", host, check=False)
    assert missing.returncode == 1 and f"Agent membership {host} could not be found" in \
        missing.stderr
