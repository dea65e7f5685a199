"""Pages read the way the API reads them (the plugin, on the database driver's connection),
on every backend, are the pages the in-memory reference gives (itself checked against a
naive oracle in tests/unit/test_paging.py).

Each limit is a different statement on PostgreSQL, where the LIMIT is written into the SQL
(db/paging.py's ``inline_limit``); a connection reused across limits must not answer one
limit's query with another's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import migration
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.paging import ListQuery, apply_in_memory

ADMIN = RequestContext.admin()


@pytest.fixture
def stored(database_url) -> Iterator[tuple[AgentMemberships, list[dict]]]:
    migration.upgrade(database_url)
    engine = db_engine.create_engine(database_url, pool_size=1)  # one connection, reused
    plugin = AgentMemberships(engine)
    items = [{"id": str(uuid.UUID(int=i * 7919 % 2**32)), "ip_address": f"192.0.2.{i}"}
             for i in range(1, 31)]
    plugin.create(ADMIN, items)
    yield plugin, items
    engine.dispose()


@pytest.mark.parametrize("sorts", [[], [("ip_address", False)]])
@pytest.mark.parametrize("page_reverse", [False, True])
def test_every_limit_and_marker_gives_the_reference_page(stored, sorts, page_reverse):
    plugin, items = stored
    reference_order = [i["id"] for i in apply_in_memory(items, ListQuery(sorts=sorts))]
    for limit in (1, 2, 7, 29, 30, 31, 100):
        for marker in (None, reference_order[0], reference_order[12], reference_order[-1]):
            query = ListQuery(sorts=sorts, limit=limit, marker=marker,
                              page_reverse=page_reverse)
            expected = apply_in_memory(items, query)
            assert plugin.list(ADMIN, query) == expected, (limit, marker)
