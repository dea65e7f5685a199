"""What a list request asks for, independent of where the items live.

The API parses a query string into a :class:`ListQuery`; SQL tables answer it with a keyset
query (``db.paging``), small in-memory collections (the agents) with :func:`apply_in_memory`.
Both order by the sort keys then ``id``, and page after the marker row exclusively, so a client
cannot tell them apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class ListQuery:
    filters: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    sorts: Sequence[tuple[str, bool]] = ()  # (key, ascending)
    limit: int | None = None
    marker: str | None = None
    page_reverse: bool = False

    def order(self, primary_key: str = "id") -> list[tuple[str, bool]]:
        """Sort keys with the primary key appended as the tie-breaker, reversed for
        ``page_reverse``: a page is fetched backwards, then flipped; without a limit the
        whole list stays backwards, as Neutron 29 answers (``get_collection`` flips its
        items back only ``if limit and page_reverse``)."""
        keys = list(self.sorts) or [(primary_key, True)]
        if primary_key not in {k for k, _ in keys}:
            keys.append((primary_key, keys[-1][1]))
        return [(k, asc != self.page_reverse) for k, asc in keys]


class _Desc:
    """Inverts ordering of a wrapped value so one tuple sort handles mixed directions."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return other.value < self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value


def _sort_key(order: list[tuple[str, bool]]):
    def key(item: Mapping[str, Any]) -> tuple:
        parts = []
        for name, asc in order:
            value = item.get(name)
            value = (value is not None, "" if value is None else value)
            parts.append(value if asc else _Desc(value))
        return tuple(parts)
    return key


def apply_in_memory(items: Iterable[Mapping[str, Any]], query: ListQuery,
                    primary_key: str = "id") -> list[Mapping[str, Any]]:
    items = list(items)
    rows = [i for i in items
            if all(i.get(k) in values for k, values in query.filters.items())]
    order = query.order(primary_key)
    key = _sort_key(order)
    rows.sort(key=key)
    if query.marker is not None:
        # Looked up among all items, as the SQL keyset does: a marker that no longer matches
        # the filters still marks the place (the walk must not start over).
        marker = next((i for i in items if i.get(primary_key) == query.marker), None)
        if marker is not None:
            marker_key = key(marker)
            rows = [r for r in rows if marker_key < key(r)]
    if query.limit:
        rows = rows[:query.limit]
        if query.page_reverse:
            rows.reverse()
    return rows
