"""The host's interfaces and IPv4 addresses, read from the kernel over netlink (pyroute2).

The admin picks a membership's ``ip_address`` from these, as the spec's agents API intends,
so only links that could carry a tunnel are listed: loopback and administratively down links
are left out. Only IPv4 addresses are reported because a tunnel endpoint must be IPv4.
"""

from __future__ import annotations

import socket

from pyroute2 import IPRoute, NetNS

from midonet_membership.nsdb.base import Interface

IFF_UP = 0x1
IFF_LOOPBACK = 0x8


def discover(netns: str | None = None) -> tuple[Interface, ...]:
    """Every up, non-loopback interface with its IPv4 addresses, in name order.

    ``netns`` reads another network namespace (a test host driven from the root namespace);
    by default the agent's own namespace is read.
    """
    # flags=0: NetNS's default flags would create a missing namespace instead of failing.
    with NetNS(netns, flags=0) if netns else IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                 if link["flags"] & IFF_UP and not link["flags"] & IFF_LOOPBACK}
        addresses: dict[int, list[str]] = {}
        for addr in ipr.get_addr(family=socket.AF_INET):
            addresses.setdefault(addr["index"], []).append(addr.get_attr("IFA_ADDRESS"))
    return tuple(sorted((Interface(name, tuple(addresses.get(index, ())))
                         for index, name in names.items()), key=lambda i: i.name))
