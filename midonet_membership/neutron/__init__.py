"""The agent-membership extension as a service plugin of a real neutron-server (neutron 29).

Loaded by ``service_plugins = midonet-membership`` in neutron.conf. It writes the same
``midonet_agent_memberships`` rows and ``midonet_tasks`` journal as our own API server, in
Neutron's database, so the same importer puts the members into the NSDB. Nothing here is
imported by our own server: this package needs neutron and neutron-lib, which only the
neutron venv (``tools/ensure-neutron``) has.
"""
