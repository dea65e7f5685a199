"""Clients walking pages at once through ``midonet-membership api`` (and the all-in-one on
SQLite) each get every membership once, in their order, while the server answers others'
pages beside theirs: the case where PostgreSQL writes a page's JSON (db.paging's
EncodedPage; SQLite and PyMySQL always do), which the tests at c=1 do not reach."""

from __future__ import annotations

import threading
import urllib.parse
import uuid

import pytest

from tests.fixtures.servers import ProductionApi, Server

PATH = "/v2.0/agent-memberships"
WALKS = [  # (query, key the walk is sorted by, descending)
    ("limit=7", "id", False),
    ("limit=9&sort_key=ip_address&sort_dir=desc", "ip_address", True),
    ("limit=50&page_reverse=True", "id", False),
    ("limit=3&sort_key=ip_address&sort_dir=asc", "ip_address", False),
]


def _walk(client, query: str) -> list[dict]:
    """Every row of ``query``'s pages, following "next" (or "previous" when reversed)."""
    rel = "previous" if "page_reverse=True" in query else "next"
    rows: list[dict] = []
    path = f"{PATH}?{query}"
    while True:
        resp = client.get(path)
        assert resp.status == 200, resp
        page = resp.json["agent_memberships"]
        rows = page + rows if rel == "previous" else rows + page
        links = {link["rel"]: link["href"] for link in resp.json["agent_memberships_links"]}
        if rel not in links:
            return rows
        href = urllib.parse.urlsplit(links[rel])
        path = f"{href.path}?{href.query}"


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "sqlite"])
def test_clients_walking_pages_at_once_each_get_every_row_in_order(tmp_path, make_database,
                                                                   backend):
    url = make_database(backend)
    server = (Server(tmp_path, url, {}, []).start() if backend == "sqlite"
              else ProductionApi(tmp_path, url))
    try:
        client = server.client()
        # same-length addresses: any collation orders them as Python orders the text
        members = [{"id": str(uuid.uuid4()), "ip_address": f"198.51.100.{i}"}
                   for i in range(100, 220)]
        resp = client.post(PATH, {"agent_memberships": members})
        assert resp.status == 201, resp
        walked: list[tuple[tuple[str, str, bool], list[dict]]] = []  # (walk, its rows)
        errors: list[BaseException] = []

        def walker(n: int) -> None:
            own = server.client()
            try:
                for round_ in range(3):
                    walk = WALKS[(n + round_) % len(WALKS)]
                    walked.append((walk, _walk(own, walk[0])))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=walker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert len(walked) == 24
        for (query, sort_key, descending), rows in walked:
            expected = sorted(members, key=lambda m: m[sort_key], reverse=descending)
            assert rows == expected, query
    finally:
        server.stop()
