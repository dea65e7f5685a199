"""Keyset pagination: ``WHERE (sort keys, id) > marker's`` and never OFFSET.

A page deep in a large table costs what the first page costs, because the database seeks
straight to the marker through the index instead of counting rows.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from midonet_membership.paging import ListQuery


def keyset_select(conn: Connection, table: sa.Table, query: ListQuery,
                  primary_key: str = "id") -> list[dict[str, Any]]:
    order = query.order(primary_key)
    columns = [table.c[name] for name, _ in order]
    stmt = sa.select(table)
    for name, values in query.filters.items():
        stmt = stmt.where(table.c[name].in_(list(values)))
    stmt = stmt.order_by(*[column.asc() if asc else column.desc()
                           for column, (_, asc) in zip(columns, order, strict=True)])
    if query.limit:
        stmt = stmt.limit(query.limit)
    rows = None
    if query.marker is not None:
        # The marker's sort values as scalar subqueries: one round trip, index range scan.
        marker = tuple(sa.select(column).where(table.c[primary_key] == query.marker)
                       .scalar_subquery() for column in columns)
        rows = conn.execute(stmt.where(_after(columns, [asc for _, asc in order], marker))).all()
        if not rows and not _exists(conn, table, primary_key, query.marker):
            rows = None  # an unknown marker is ignored, as Neutron does
    if rows is None:
        rows = conn.execute(stmt).all()
    result = [dict(row._mapping) for row in rows]
    if query.page_reverse:
        result.reverse()
    return result


def _exists(conn: Connection, table: sa.Table, primary_key: str, value: str) -> bool:
    return conn.execute(sa.select(table.c[primary_key])
                        .where(table.c[primary_key] == value)).first() is not None


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
