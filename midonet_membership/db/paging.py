"""Keyset pagination: ``WHERE (sort keys, id) > marker's`` and never OFFSET.

A page deep in a large table costs what the first page costs, because the database seeks
straight to the marker through the index instead of counting rows.

The statements are built once per query *shape* (table, order, filtered columns, whether
there is a limit and a marker) with every value a bound parameter: building and
cache-keying a SQLAlchemy statement per request cost more than the database did (0.3 ms of
a 1.4 ms SQLite list, cProfile).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.compiler import compiles

from midonet_membership.db.engine import AnyConnection, database_server
from midonet_membership.paging import ListQuery


def keyset_select(conn: AnyConnection, table: sa.Table, query: ListQuery,
                  primary_key: str = "id", encoded: bool = False) -> Page | EncodedPage:
    """The page ``query`` asks for. ``encoded``: the caller will write the rows out as JSON
    as they are, so a server database may hand the page over as JSON text
    (:class:`EncodedPage`) instead of rows."""
    order = tuple(query.order(primary_key))
    filtered = tuple(sorted(query.filters))
    params: dict[str, Any] = {f"filter_{name}": list(query.filters[name]) for name in filtered}
    dialect = conn.dialect.name
    server = database_server(conn.dialect)
    if encoded and _text_only(table) and 0 < (query.limit or 0) <= _ENCODED_MAX_ROWS.get(
            server, 0):
        shape = (server, table, order, filtered, query.limit, query.page_reverse, primary_key)
        return _after_marker(conn, table, query, primary_key, params, lambda after, values: (
            _read_encoded(conn, shape, after, values)))
    inline_limit = query.limit if dialect == "postgresql" else None
    if query.limit and not inline_limit:
        params["limit"] = query.limit
    as_json = dialect == "sqlite" and _text_only(table)
    shape = (table, order, filtered, bool(query.limit), inline_limit)
    result = _after_marker(conn, table, query, primary_key, params, lambda after, values: (
        _read(conn, _page(*shape, after, primary_key, as_json), values, table, as_json)))
    if query.page_reverse and query.limit:  # without one, backwards (ListQuery.order)
        result.reverse()
    return result


def _after_marker(conn: AnyConnection, table: sa.Table, query: ListQuery, primary_key: str,
                  params: dict[str, Any], read: Callable[[bool, dict[str, Any]], Any]) -> Any:
    """``read(after_marker, params)`` of the page after the marker, or of the first page
    when there is none, or when it names no row (an unknown marker is ignored, as Neutron
    does; its existence is looked up only when the page after it is empty)."""
    if query.marker is not None:
        result = read(True, {**params, "marker": query.marker})
        if result or _exists(conn, table, primary_key, query.marker):
            return result
    return read(False, params)


# The most rows a page may have to be written as JSON by the database. MariaDB's
# JSON_ARRAYAGG cuts its text at group_concat_max_len with a warning only (db.engine sets
# 4 MiB for its sessions): a thousand rows of this project's tables are at most ~630 KB
# even if every character were escaped. PostgreSQL's and SQLite's texts have no such limit
# that a page reaches. MySQL's JSON_ARRAYAGG takes no ORDER BY: its pages stay rows.
_ENCODED_MAX_ROWS = {"postgresql": 2**63, "mariadb": 1000, "sqlite": 2**63}


class Page(list):
    """A page's rows, each a dict whose keys are exactly ``row_keys`` (the table's columns):
    the API need not look at every row to know what they hold."""

    row_keys: frozenset[str]


class EncodedPage(Sequence):
    """A page the database wrote as one JSON array, kept as that text: the API puts it in
    its response as it is (``json_fragment``) and parses it only if someone reads a row.

    Why: at c=8 the production worker's page spent a fifth of its GIL-holding time turning
    100 rows into Python strings, dicts and back to JSON (py-spy --gil, issue 12), work the
    database does beside it on the other core. ``row_keys`` are the keys every row has.
    """

    def __init__(self, json: str, count: int, row_keys: frozenset[str], primary_key: str,
                 edge_ids: tuple[str, str] | None = None) -> None:
        self.json, self.count, self.row_keys = json, count, row_keys
        self._primary_key = primary_key
        if edge_ids is not None or not count:
            self.__dict__["edge_ids"] = edge_ids

    @functools.cached_property
    def rows(self) -> list[dict[str, Any]]:
        return orjson.loads(self.json)

    @functools.cached_property
    def edge_ids(self) -> tuple[str, str] | None:
        """The first and last rows' primary keys (the page links' markers): PostgreSQL's
        page names them; MariaDB's is parsed for them (orjson, 15-30 µs a page of 100,
        where its own statement took 200 µs more to name them)."""
        return self.rows[0][self._primary_key], self.rows[-1][self._primary_key]

    @property
    def json_fragment(self) -> orjson.Fragment:
        return orjson.Fragment(self.json)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[override]
        return self.rows[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __eq__(self, other: object) -> bool:
        return self.rows == other

    __hash__ = None  # type: ignore[assignment]


def _read_encoded(conn: AnyConnection, shape: tuple, after_marker: bool,
                  params: dict[str, Any]) -> EncodedPage:
    """The page as one JSON text. PostgreSQL's first comes with each value quoted as it is,
    not through ``to_json`` (:func:`_postgresql_encoded` says why); a page in which some
    value needed escaping (a quote, a backslash, a control character: nothing the API
    validates in, but a row may come from elsewhere) is read again with the escapes."""
    server, table, *_, primary_key = shape
    quoted_as_is = server == "postgresql" and _never_null(table)
    json, count, *edges = conn.execute(_encoded(*shape, after_marker, quoted_as_is),
                                       params).first()
    if quoted_as_is and _unescaped(json, count, len(table.c)):
        json, count, *edges = conn.execute(_encoded(*shape, after_marker), params).first()
    return EncodedPage(json, count, _column_keys(table), primary_key,
                       _edge_ids(edges, primary_key) if count else None)


# What JSON must escape in a string but a quote, which is counted instead (a JSON text's own
# structure holds none of them). A count and a bytes.translate of a page of 100 took 7 µs in
# a loop and 14 µs of the worker's CPU at c=8 (bench/compare.py); a regular expression over
# the page 28 µs in the loop; PostgreSQL's, of every value or of the page, ~60 µs (issue 12).
_ESCAPED = bytes(range(0x20)) + b"\\"


def _unescaped(json: str, count: int, columns: int) -> bool:
    """Whether a page of values quoted as they are holds one that needed escaping: each row
    has exactly four quotes per column (its key's and its value's) unless a value held
    one."""
    if json.count('"') != 4 * columns * count:
        return True
    text = json.encode()
    return len(text.translate(None, _ESCAPED)) != len(text)


def _edge_ids(edges: list[str], primary_key: str) -> tuple[str, str] | None:
    """The first and last rows' primary keys from what the page's statement names of them:
    PostgreSQL's names the two rows (each a short JSON object), SQLite's their keys (one JSON
    array of the two), MariaDB's nothing (its page is parsed for them when asked)."""
    if len(edges) == 2:
        return tuple(orjson.loads(row)[primary_key] for row in edges)
    return tuple(orjson.loads(edges[0])) if edges else None


@functools.lru_cache(maxsize=512)
def _encoded(dialect: str, table: sa.Table, order: tuple[tuple[str, bool], ...],
             filtered: tuple[str, ...], limit: int, page_reverse: bool, primary_key: str,
             after_marker: bool, quoted_as_is: bool = False) -> sa.Select:
    """The page of :func:`_page` as one row: the JSON array of its rows in the order the
    client sees them (fetched backwards for ``page_reverse``, so ordered the other way),
    its row count, and on PostgreSQL its first and last rows' JSON. Each row is
    written as orjson writes it (compact, keys in column order; the columns are text), so
    a page's bytes do not depend on who wrote it."""
    page = _page(table, order, filtered, True, limit, after_marker, primary_key,
                 False).subquery()

    shown = [page.c[name].asc() if asc != page_reverse else page.c[name].desc()
             for name, asc in order]
    if dialect == "postgresql":
        return _postgresql_encoded(page, table, shown, quoted_as_is)
    if dialect == "sqlite":
        if page_reverse:
            page = sa.select(page).order_by(*shown).limit(
                sa.literal_column(str(int(limit)))).subquery()
        return _sqlite_encoded(page, table, primary_key)
    return _mariadb_encoded(page, table, shown)


def _postgresql_encoded(page: sa.Subquery, table: sa.Table, shown: list,
                        quoted_as_is: bool) -> sa.Select:
    """The array of the rows' JSON texts in the client's order (``ARRAY(SELECT ... ORDER
    BY)``), joined; its length; its first and last rows' texts (the links' markers).

    Each row's JSON is concatenated from ``to_json`` of its values: PostgreSQL's ``json_agg``
    writes ``", \n"`` between rows and ``" : "`` in them. An aggregate's own ``ORDER BY``
    sorts its input again even when the page comes sorted (PostgreSQL 15), and the edges
    took ``min`` and ``max`` or two more sorts; the array's ``ORDER BY`` is the page's own
    order, which PostgreSQL does not sort again, and the edges are its ends. ``OFFSET 0``
    keeps the array one value: without it PostgreSQL builds it once per reference. A first
    page of 100, ``pgbench -M prepared``, one client: 0.27-0.31 -> 0.23-0.25 ms (rows:
    0.15), issue 12.

    ``quoted_as_is``: each value between quotes as it is, which is its JSON when it holds
    nothing to escape (:func:`_read_encoded` checks). ``to_json`` looks up how to write its
    argument's type at every call: a first page of 100 of 100,000 rows, same pgbench, took
    0.179-0.214 ms with it, 0.128-0.165 without, 0.113-0.151 as rows (issue 12)."""
    row_json = None
    for i, name in enumerate(table.c.keys()):
        key = _sql_text(("," if i else "{") + orjson.dumps(name).decode() + ":")
        value = key + (_sql_text('"') + page.c[name] + _sql_text('"') if quoted_as_is
                       else sa.cast(sa.func.to_json(page.c[name]), sa.Text))
        row_json = value if row_json is None else row_json + value
    rows = sa.select(row_json + _sql_text("}")).order_by(*shown).scalar_subquery()
    texts = sa.select(sa.func.array(rows, type_=ARRAY(sa.Text)).label("texts")).offset(
        sa.literal_column("0")).subquery().c.texts
    count = sa.func.cardinality(texts, type_=sa.Integer)
    return sa.select(_sql_text("[") + sa.func.array_to_string(texts, _sql_text(",")) +
                     _sql_text("]"), count, texts[sa.literal_column("1", sa.Integer)],
                     texts[count])


def _sqlite_encoded(page: sa.Subquery, table: sa.Table, primary_key: str) -> sa.Select:
    """``json_group_array`` of the rows as the page subquery gives them (SQLite aggregates
    a subquery's rows in its ORDER BY's order, which its LIMIT keeps it from dropping: a
    reversed page is put back in the client's order by a subquery with the same LIMIT), its
    count, and the first and last rows' keys as one JSON array: ``json_extract`` with both
    paths parses the page's text once.

    Why: the page used to come as JSON and be parsed by orjson for the links' markers, then
    written again (19 + 8 µs of a 179 µs first page in-process, bench/profile_app.py
    --top). SQLite's one parse of its own text costs less, and runs with the GIL let go
    (instructions per page before and after: docs/api-performance.md, issue 12)."""
    aggregated = sa.select(sa.func.json_group_array(_json_object(page, table)).label("json"),
                           sa.func.count().label("count")).subquery()
    json, count = aggregated.c.json, aggregated.c.count
    last = _sql_text("$[") + sa.cast(count - 1, sa.Text) + _sql_text("]." + primary_key)
    edges = sa.case((count > 0, sa.func.json_extract(json, _sql_text("$[0]." + primary_key),
                                                      last)))
    return sa.select(json, count, edges)


def _mariadb_encoded(page: sa.Subquery, table: sa.Table, shown: list) -> sa.Select:
    """``JSON_ARRAYAGG`` made compact (MariaDB writes ``", "`` and ``": "``)."""
    return sa.select(sa.func.coalesce(sa.func.json_compact(sa.func.json_arrayagg(
        aggregate_order_by(_json_object(page, table), *shown))), _sql_text("[]")),
        sa.func.count())


def _json_object(page: sa.Subquery, table: sa.Table) -> sa.ColumnElement:
    """A row of ``page`` as SQLite's and MariaDB's ``JSON_OBJECT`` of its columns, in the
    table's column order."""
    return sa.func.json_object(*[part for name in table.c.keys()
                                 for part in (_sql_text(name), page.c[name])])


@compiles(aggregate_order_by, "mysql")
@compiles(aggregate_order_by, "mariadb")
def _aggregate_order_by_on_mariadb(element: aggregate_order_by, compiler, **kw) -> str:
    """MariaDB's ``JSON_ARRAYAGG(expr ORDER BY ...)``: PostgreSQL's form, which SQLAlchemy
    writes for PostgreSQL only."""
    return (f"{compiler.process(element.target, **kw)} "
            f"ORDER BY {compiler.process(element.order_by, **kw)}")


def _sql_text(text: str) -> sa.ColumnElement:
    """A string constant written into the statement (not a parameter per execution)."""
    return sa.literal_column("'" + text.replace("'", "''") + "'", sa.Text)


def _read(conn: AnyConnection, page: sa.Select, params: dict[str, Any], table: sa.Table,
          as_json: bool) -> Page:
    rows = conn.execute(page, params).all()
    result = Page(orjson.loads(rows[0][0]) if as_json else _as_dicts(table)(rows))
    result.row_keys = _column_keys(table)
    return result


@functools.cache
def _column_keys(table: sa.Table) -> frozenset[str]:
    return frozenset(table.c.keys())


@functools.cache
def _never_null(table: sa.Table) -> bool:
    """Whether no column takes NULL: quoted as it is, a NULL would drop its row's text from
    the page, and its quotes from the count that finds a quote in a value."""
    return not any(column.nullable for column in table.c)


@functools.cache
def _text_only(table: sa.Table) -> bool:
    """Whether every column is text, which SQLite's JSON gives back as it is stored."""
    return all(isinstance(column.type, sa.String) for column in table.c)


@functools.cache
def _as_dicts(table: sa.Table) -> Callable[[Sequence[Sequence[Any]]], list[dict]]:
    """Rows of ``table`` to dicts keyed by its column names: a list comprehension of one
    dict display, generated once per table (as ``collections.namedtuple`` generates its
    methods), so a request does not even list the columns again.

    Why: a page of 100 rows took 41 µs as ``dict(zip(names, row, strict=True))`` per row,
    26 µs without ``strict``, 8 µs as ``{'id': row[0], 'ip_address': row[1]}`` (timeit, this
    machine); it was the largest frame of a list page's own Python under load (py-spy
    --gil). The names are a table's column keys, each written as its ``repr``.
    """
    entries = ", ".join(f"{name!r}: row[{i}]" for i, name in enumerate(table.c.keys()))
    return eval(f"lambda rows: [{{{entries}}} for row in rows]", {})


@functools.lru_cache(maxsize=512)
def _page(table: sa.Table, order: tuple[tuple[str, bool], ...], filtered: tuple[str, ...],
          limited: bool, inline_limit: int | None, after_marker: bool, primary_key: str,
          as_json: bool) -> sa.Select:
    """The page statement of one query shape; parameters ``filter_<name>`` (lists),
    ``limit`` (unless ``inline_limit``) and ``marker``.

    ``as_json``: SQLite answers the page as one row, a JSON array of the rows' objects in
    the page's order (the page is a subquery whose ORDER BY and LIMIT SQLite runs before it
    aggregates; ``tests/integration/test_list_pages.py`` checks every order and direction).
    Why: Python's sqlite3 lets go of the GIL at every row it steps, so under concurrent
    requests a page of 100 rows handed the GIL to the other threads up to 100 times and
    waited to win it back each time: 8 threads reading pages on one connection each got
    5,700-5,900 pages/s and 167-198 µs of CPU a page, against 8,600-8,900 pages/s and
    126 µs as one JSON row parsed by orjson. One thread pays a little for it (72-88 µs of
    CPU a page as rows, 91-115 µs as JSON, two runs), which a server's threads win back.

    ``inline_limit``: the limit, written into the SQL instead of sent as a parameter.
    PostgreSQL plans a prepared statement whose LIMIT is a parameter again at every
    execution (its custom plan for a small LIMIT always looks cheaper than the generic
    one: ``pg_prepared_statements.custom_plans`` counts every execution, 15.x): 35 µs more
    per first page, 70 µs per deep page, through psycopg on this machine. With the value
    in the SQL, each limit is planned once per connection. The statement is built and
    compiled once per limit: rendering the value into the SQL at each execution
    (SQLAlchemy's ``literal_execute``) cost SQLAlchemy's expansion of the compiled
    statement every time.
    """
    columns = [table.c[name] for name, _ in order]
    stmt = sa.select(table)
    for name in filtered:
        stmt = stmt.where(table.c[name].in_(sa.bindparam(f"filter_{name}", expanding=True)))
    stmt = stmt.order_by(*[column.asc() if asc else column.desc()
                           for column, (_, asc) in zip(columns, order, strict=True)])
    if inline_limit:
        stmt = stmt.limit(sa.literal_column(str(int(inline_limit))))
    elif limited:
        stmt = stmt.limit(sa.bindparam("limit", type_=sa.Integer))
    if after_marker:
        # The marker's sort values as scalar subqueries: one round trip, index range scan.
        marker = tuple(sa.select(column).where(table.c[primary_key] == sa.bindparam("marker"))
                       .scalar_subquery() for column in columns)
        stmt = stmt.where(_after(columns, [asc for _, asc in order], marker))
    if as_json:
        page = stmt.subquery()
        stmt = sa.select(sa.func.json_group_array(_json_object(page, table)))
    return stmt


@functools.cache
def _exists_statement(table: sa.Table, primary_key: str) -> sa.Select:
    return sa.select(table.c[primary_key]).where(table.c[primary_key] == sa.bindparam("id"))


def _exists(conn: AnyConnection, table: sa.Table, primary_key: str, value: str) -> bool:
    return conn.execute(_exists_statement(table, primary_key), {"id": value}).first() is not None


def _after(columns: list[sa.Column], ascending: list[bool], values: tuple) -> sa.ColumnElement:
    """Rows strictly after ``values`` in the given order (mixed directions allowed).

    Expanded as ``k1 > v1 OR (k1 = v1 AND k2 > v2) OR ...``, with ``k1 >= v1`` in front so
    the planner can still range-scan the first key's index.
    """
    def beyond(i: int) -> sa.ColumnElement:
        return columns[i] > values[i] if ascending[i] else columns[i] < values[i]

    alternatives = []
    for i in range(len(columns)):
        equal_prefix = [columns[j] == values[j] for j in range(i)]
        alternatives.append(sa.and_(*equal_prefix, beyond(i)))
    first = columns[0] >= values[0] if ascending[0] else columns[0] <= values[0]
    return sa.and_(first, sa.or_(*alternatives))
