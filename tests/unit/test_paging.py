"""List queries: ``apply_in_memory`` (the agents) and ``keyset_select`` (SQL tables) answer
every ListQuery alike, and as Neutron pages: sort keys then id, marker exclusive, page_reverse
is the page before the marker (and without a limit, the whole list backwards).

The expected pages come from a deliberately naive oracle (multi-pass stable sort, slicing by
the marker's position among all items), not from the code under test.
"""

from __future__ import annotations

import operator

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from midonet_membership.db.paging import keyset_select
from midonet_membership.paging import ListQuery, apply_in_memory

ITEMS = [
    {"id": "a", "zone": "x", "n": 2},
    {"id": "b", "zone": "y", "n": 1},
    {"id": "c", "zone": "x", "n": 1},
    {"id": "d", "zone": "y", "n": 2},
    {"id": "e", "zone": "x", "n": 3},
    {"id": "f", "zone": "z", "n": 1},
]


def ids(rows) -> list[str]:
    return [r["id"] for r in rows]


def run(**query) -> list[str]:
    return ids(apply_in_memory(ITEMS, ListQuery(**query)))


# -- examples -------------------------------------------------------------------------------------

def test_default_order_is_by_id():
    assert run() == ["a", "b", "c", "d", "e", "f"]
    assert run(limit=0) == ["a", "b", "c", "d", "e", "f"]


def test_mixed_direction_sorts_break_ties_with_id_in_the_last_direction():
    assert run(sorts=[("zone", True), ("n", False)]) == ["e", "a", "c", "d", "b", "f"]
    assert run(sorts=[("zone", False), ("n", True)]) == ["f", "b", "d", "c", "a", "e"]
    # ties on n are broken by id, in n's direction
    assert run(sorts=[("n", True)]) == ["b", "c", "f", "a", "d", "e"]
    assert run(sorts=[("n", False)]) == ["e", "d", "a", "f", "c", "b"]
    assert run(sorts=[("n", False), ("id", True)]) == ["e", "a", "d", "b", "c", "f"]


def test_marker_is_exclusive_and_pages_walk_forward():
    order = [("zone", True), ("n", False)]
    assert run(sorts=order, limit=2) == ["e", "a"]
    assert run(sorts=order, limit=2, marker="a") == ["c", "d"]
    assert run(sorts=order, limit=2, marker="d") == ["b", "f"]
    assert run(sorts=order, limit=2, marker="f") == []


def test_page_reverse_is_the_page_before_the_marker_in_normal_order():
    order = [("zone", True), ("n", False)]
    assert run(sorts=order, limit=2, marker="b", page_reverse=True) == ["c", "d"]
    assert run(sorts=order, limit=2, marker="c", page_reverse=True) == ["e", "a"]
    assert run(sorts=order, limit=2, marker="a", page_reverse=True) == ["e"]
    assert run(sorts=order, limit=2, marker="e", page_reverse=True) == []
    # without a marker: the last page
    assert run(sorts=order, limit=2, page_reverse=True) == ["b", "f"]
    # without a limit the whole list, backwards, as stock neutron 29 answers
    assert run(sorts=order, page_reverse=True) == run(sorts=order)[::-1]


def test_an_unknown_marker_is_ignored():
    assert run(limit=2, marker="nope") == ["a", "b"]
    assert run(limit=2, marker="nope", page_reverse=True) == ["e", "f"]


def test_filters_are_equality_and_repeated_values_are_or():
    assert run(filters={"zone": ["x"]}) == ["a", "c", "e"]
    assert run(filters={"zone": ["x", "z"]}) == ["a", "c", "e", "f"]
    assert run(filters={"zone": ["x"], "n": [1, 3]}) == ["c", "e"]
    assert run(filters={"zone": []}) == []
    assert run(filters={"zone": ["nope"]}) == []


def test_a_marker_outside_the_filter_still_marks_the_place():
    # A client walks zone=x pages; the marker's row leaves the filter between two requests
    # (its zone changed). The next page must continue after it, not start over.
    items = [dict(i) for i in ITEMS]
    first = ids(apply_in_memory(items, ListQuery(filters={"zone": ["x"]}, limit=2)))
    assert first == ["a", "c"]
    items[2]["zone"] = "y"  # "c" no longer matches
    rest = ids(apply_in_memory(items, ListQuery(filters={"zone": ["x"]}, limit=2,
                                                marker="c")))
    assert rest == ["e"]


def test_missing_values_sort_first_ascending():
    items = [{"id": "a", "host": "h2"}, {"id": "b"}, {"id": "c", "host": "h1"}]
    assert ids(apply_in_memory(items, ListQuery(sorts=[("host", True)]))) == ["b", "c", "a"]
    assert ids(apply_in_memory(items, ListQuery(sorts=[("host", False)]))) == ["a", "c", "b"]


# -- the oracle, and both implementations against it ------------------------------------------

def expected(items: list[dict], query: ListQuery) -> list[str]:
    keys = list(query.sorts) or [("id", True)]
    if "id" not in {k for k, _ in keys}:
        keys.append(("id", keys[-1][1]))
    ordered = list(items)
    for name, asc in reversed(keys):  # stable multi-pass sort: the last key first
        ordered.sort(key=operator.itemgetter(name), reverse=not asc)
    position = next((i for i, r in enumerate(ordered) if r["id"] == query.marker), None)
    if position is None:
        before, after = ordered, ordered
    else:
        before, after = ordered[:position], ordered[position + 1:]
    pool = before if query.page_reverse else after

    def match(r: dict) -> bool:
        return all(r[k] in v for k, v in query.filters.items())
    pool = [r for r in pool if match(r)]
    if query.limit:
        pool = pool[-query.limit:] if query.page_reverse else pool[:query.limit]
    elif query.page_reverse:  # no page to put back in order: the list stays backwards
        pool.reverse()
    return ids(pool)


ids_st = st.lists(st.text(alphabet="abcdef", min_size=1, max_size=3), min_size=1, max_size=12,
                  unique=True)


@st.composite
def cases(draw):
    item_ids = draw(ids_st)
    items = [{"id": i, "zone": draw(st.sampled_from("xyz")), "n": draw(st.integers(0, 3))}
             for i in item_ids]
    sorts = draw(st.lists(st.tuples(st.sampled_from(["zone", "n", "id"]), st.booleans()),
                          max_size=3, unique_by=lambda s: s[0]))
    filters = draw(st.dictionaries(st.sampled_from(["zone", "n"]),
                                   st.lists(st.sampled_from(["x", "y", 1, 2]), min_size=1,
                                            max_size=2), max_size=1))
    marker = draw(st.sampled_from(item_ids) | st.none() | st.just("zz"))
    query = ListQuery(filters=filters, sorts=sorts, limit=draw(st.integers(0, 5)) or None,
                      marker=marker, page_reverse=draw(st.booleans()))
    return items, query


@settings(max_examples=400, deadline=None, derandomize=True)
@given(cases())
def test_apply_in_memory_matches_the_oracle(case):
    items, query = case
    assert ids(apply_in_memory(items, query)) == expected(items, query)


@pytest.fixture(scope="module")
def table():
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool,
                              connect_args={"check_same_thread": False})
    metadata = sa.MetaData()
    t = sa.Table("things", metadata, sa.Column("id", sa.String(8), primary_key=True),
                 sa.Column("zone", sa.String(8), nullable=False),
                 sa.Column("n", sa.Integer, nullable=False))
    metadata.create_all(engine)
    yield engine, t
    engine.dispose()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cases())
def test_keyset_select_on_sqlite_matches_the_oracle(table, case):
    engine, t = table
    items, query = case
    with engine.begin() as conn:
        conn.execute(sa.delete(t))
        if items:
            conn.execute(sa.insert(t), items)
        got = ids(keyset_select(conn, t, query))
    assert got == expected(items, query)


# -- keyset, not OFFSET ---------------------------------------------------------------------------

@pytest.mark.parametrize("query, seek", [
    (ListQuery(limit=5, marker=f"{500:036d}"), "(id>?)"),
    (ListQuery(limit=5, marker=f"{500:036d}", page_reverse=True), "(id<?)"),
    (ListQuery(limit=5, marker=f"{500:036d}", sorts=[("ip_address", False)]),
     "(ip_address<?)"),
    (ListQuery(limit=5, marker=f"{500:036d}", sorts=[("ip_address", False)],
               page_reverse=True), "(ip_address>?)"),
    (ListQuery(limit=5, marker=f"{500:036d}", sorts=[("ip_address", True), ("id", False)]),
     "(ip_address>?)"),
])
def test_a_deep_page_is_one_index_seek(query, seek):
    """DESIGN §5: the page after a marker is found through the index (the database seeks to
    the marker), not by counting rows from the start or sorting the table."""
    from midonet_membership.db.models import Base, memberships
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(memberships), [
            {"id": f"{i:036d}", "ip_address": f"10.0.{i // 256}.{i % 256}"} for i in range(1000)])
    statements = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):
        statements.append((statement, parameters))
    sa.event.listen(engine, "before_cursor_execute", capture)
    with engine.begin() as conn:
        page = keyset_select(conn, memberships, query)
    sa.event.remove(engine, "before_cursor_execute", capture)
    assert len(page) == 5 and len(statements) == 1  # one round trip
    statement, parameters = statements[0]
    assert parameters[-1] == 0 or "OFFSET" not in statement  # SQLAlchemy writes OFFSET 0
    with engine.begin() as conn:
        plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                                       parameters)]
    engine.dispose()
    # SQLite reads the page as one JSON row aggregated over the page's subquery: the outer
    # query's "SCAN" of that co-routine reads the page's (at most limit) rows, not the table.
    pages = {step.split()[-1] for step in plan if step.startswith("CO-ROUTINE ")}
    steps = [step for step in plan if not step.startswith("CO-ROUTINE ")
             and step not in {f"SCAN {page}" for page in pages}]
    assert not [step for step in steps if "SCAN" in step or "TEMP B-TREE" in step], plan
    assert seek in steps[0], plan
