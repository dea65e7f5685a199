"""Shared test setup. Fixture modules live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.databases",
    "tests.fixtures.servers",
    "tests.fixtures.zookeeper",
    "tests.fixtures.nsdb",
    "tests.fixtures.keystone",
    "tests.fixtures.hosts",
    "tests.fixtures.browser",
    "tests.fixtures.neutron",
    "tests.fixtures.galera",
    "tests.fixtures.bench",
]
