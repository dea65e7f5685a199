"""Random bodies, query strings and ids against a real server.

Properties: never a 5xx; every error is a NeutronError JSON body; a refused POST or DELETE
leaves the memberships table and the task count as they were; an accepted one did exactly
what it says. Examples are derandomized so CI runs are reproducible.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.servers import Server

PATH = "/v2.0/agent-memberships"
SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": list(HealthCheck)}
EXAMPLES = {  # (bodies, queries) per backend: about 50 s for the whole file on 2 cores
    "sqlite": (1500, 1000),
    "postgresql": (800, 600),
}
RAW_EXAMPLES = 400  # raw HTTP requests, SQLite only (they never reach the database)

# -- strategies -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=12)
huge_text = st.integers(10_000, 60_000).flatmap(  # JSON-escaped, still under 1 MiB
    lambda n: st.sampled_from(["1", "9.", "\u00e9", "\U0001f600", "a-"]).map(lambda c: c * n))
junk_chars = st.sampled_from([" ", "\n", "\t", "\x00", "0", "-", ".", ":", "{", "}", "/",
                              "\u0660", "\u00a0", "\ufeff", "\ud800", "\U0001f600", "A", "g"])


@st.composite
def mutated(draw, base: st.SearchStrategy[str]) -> str:
    """A valid value with a few random edits: near misses a validator must catch."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "swapcase", "pad"]))
        i = draw(st.integers(0, len(text)))
        char = draw(junk_chars | st.characters())
        if op == "delete":
            text = text[:i] + text[i + 1:]
        elif op == "insert":
            text = text[:i] + char + text[i:]
        elif op == "replace":
            text = text[:i] + char + text[i + 1:]
        elif op == "swapcase":
            text = text.swapcase()
        else:
            text = char + text if draw(st.booleans()) else text + char
    return text


def padded(base: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid value with white space or a control character around it."""
    pad = st.sampled_from(["\n", " ", "\t", "\r\n", "\x00", "\u00a0"])
    return st.tuples(pad, base, pad, st.integers(0, 2)).map(
        lambda t: [t[1] + t[2], t[0] + t[1], t[0] + t[1] + t[2]][t[3]])


uuids = st.uuids().map(str)
ips = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255),
                st.integers(0, 255)).map(lambda t: ".".join(map(str, t)))
id_like = st.one_of(uuids, uuids.map(str.upper), mutated(uuids), padded(uuids),
                    st.text(max_size=40), json_values, huge_text)
ip_like = st.one_of(ips, mutated(ips), padded(ips), st.ip_addresses(v=6).map(str),
                    st.text(alphabet="0123456789.:abcdef ", max_size=20), json_values,
                    st.integers(-1, 2**32), huge_text)
attributes = st.fixed_dictionaries({}, optional={
    "id": id_like, "ip_address": ip_like, "tenant_id": st.text(max_size=5),
    "name": json_values, "": st.none()})
bodies = st.one_of(
    attributes.map(lambda a: {"agent_membership": a}),
    st.lists(attributes, max_size=3).map(lambda items: {"agent_memberships": items}),
    json_values, st.dictionaries(st.sampled_from(["agent_membership", "agent_memberships",
                                                  "x"]), json_values))
raw_bodies = st.one_of(
    bodies.map(lambda b: json.dumps(b).encode()),
    bodies.map(lambda b: json.dumps(b).encode()[:-1]),  # truncated
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(100, 100_000).map(  # nested deeper than a recursive parser goes
        lambda n: b'{"agent_membership": ' + b"[" * n + b"]" * n + b"}"),
    # A larger body is refused (413) before it is read; sending one races the server's
    # close (test_api_conformance checks that from the headers alone).
).filter(lambda raw: len(raw) <= 1 << 20)

RESERVED = ["limit", "marker", "sort_key", "sort_dir", "fields", "page_reverse"]
query_keys = st.sampled_from([*RESERVED, "id", "ip_address", "bogus", "tenant_id"]) | st.text(
    max_size=8)


def query_values(member_ids: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=20), st.integers(-10, 10).map(str),
        st.integers(-10**25, 10**25).map(str), uuids, st.sampled_from(member_ids),
        mutated(st.sampled_from(member_ids)), padded(st.sampled_from(member_ids)),
        mutated(ips), padded(st.sampled_from(["198.51.100.1", "198.51.100.2"])),
        st.sampled_from(["asc", "desc", "True", "false", "id", "ip_address", "0", "-1", "",
                         "198.51.100.1", "198.51.100.1 ", "2"]))


def query_strings(member_ids: list[str]) -> st.SearchStrategy[str]:
    encoded = st.lists(st.tuples(query_keys, query_values(member_ids)), max_size=8).map(
        lambda pairs: urllib.parse.urlencode(pairs, encoding="utf-8", errors="surrogatepass"))
    raw = st.lists(st.tuples(query_keys.map(urllib.parse.quote),
                             st.binary(max_size=6).map(urllib.parse.quote_from_bytes)),
                   max_size=3).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
    return st.tuples(encoded, raw | st.just("")).map(lambda t: "&".join(p for p in t if p))


def targets(member_ids: list[str]) -> st.SearchStrategy[str]:
    ids = st.one_of(st.sampled_from(member_ids), mutated(st.sampled_from(member_ids)),
                    padded(st.sampled_from(member_ids)), uuids, st.text(min_size=1, max_size=40))
    return st.one_of(
        st.sampled_from([PATH, "/v2.0/agent_memberships", f"{PATH}.json"]),
        ids.map(lambda i: f"{PATH}/{urllib.parse.quote(i, safe='', errors='surrogatepass')}"),
        ids.map(lambda i: f"{PATH}/{urllib.parse.quote(i, safe='', errors='surrogatepass')}"
                          ".json"),
        st.text(max_size=12).map(lambda t: "/v2.0/extensions/" + urllib.parse.quote(
            t, safe="", errors="surrogatepass")))


# -- servers and checks ---------------------------------------------------------------------------

@pytest.fixture(scope="module", params=list(EXAMPLES))
def fuzz_server(request, make_database, tmp_path_factory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("state"), make_database(request.param), {}, [])
    server.backend = request.param
    server.start()
    server.engine = sa.create_engine(server.database_url, pool_size=1)
    yield server
    server.engine.dispose()
    server.stop()


def snapshot(server: Server) -> tuple:
    with server.engine.connect() as conn:
        members = conn.exec_driver_sql("SELECT id, ip_address FROM midonet_agent_memberships "
                                       "ORDER BY id").all()
        tasks = conn.exec_driver_sql("SELECT count(*) FROM midonet_tasks").scalar()
    return tuple(map(tuple, members)), tasks


def check_response(resp) -> None:
    assert resp.status < 500, resp
    assert resp.headers["x-openstack-request-id"].startswith("req-")
    if resp.status >= 400:
        assert resp.headers["content-type"].startswith("application/json"), resp
        assert list(resp.json) == ["NeutronError"], resp
        assert set(resp.json["NeutronError"]) == {"type", "message", "detail"}, resp


def test_random_posts(fuzz_server):
    api = fuzz_server.client()
    examples = EXAMPLES[fuzz_server.backend][0]

    @settings(max_examples=examples, **SETTINGS)
    @given(raw=raw_bodies)
    def check(raw):
        before = snapshot(fuzz_server)
        resp = api.post(PATH, raw=raw)
        check_response(resp)
        after = snapshot(fuzz_server)
        if resp.status != 201:
            assert after == before, (raw, resp)
            return
        sent = json.loads(raw)
        sent = sent.get("agent_memberships") or [sent["agent_membership"]]
        got = resp.json.get("agent_memberships") or [resp.json["agent_membership"]]
        assert got == [{"id": str(uuid.UUID(s["id"])), "ip_address": s["ip_address"]}
                       for s in sent]
        assert after == (tuple(sorted(before[0] + tuple((g["id"], g["ip_address"])
                                                        for g in got))), before[1] + len(got))
        for item in got:
            assert api.delete(f"{PATH}/{item['id']}").status == 204
    check()


def test_random_queries_and_ids(fuzz_server):
    api = fuzz_server.client()
    examples = EXAMPLES[fuzz_server.backend][1]
    members = {str(uuid.uuid4()): f"198.51.100.{i + 1}" for i in range(4)}
    for host, ip in members.items():
        assert api.post(PATH, {"agent_membership": {"id": host, "ip_address": ip}}).status \
            == 201
    member_ids = sorted(members)

    @settings(max_examples=examples, **SETTINGS)
    @given(target=targets(member_ids), query=query_strings(member_ids),
           method=st.sampled_from(["GET", "GET", "GET", "DELETE"]))
    def check(target, query, method):
        before = snapshot(fuzz_server)
        resp = api.request(method, f"{target}?{query}" if query else target)
        check_response(resp)
        after = snapshot(fuzz_server)
        if method == "DELETE" and resp.status == 204:
            # only a member's id (in any letter case) deletes it; put it back
            [gone] = set(before[0]) - set(after[0])
            assert after[1] == before[1] + 1
            assert api.post(PATH, {"agent_membership": dict(
                zip(["id", "ip_address"], gone, strict=True))}).status == 201
            return
        assert after == before, (target, query, resp)
        if resp.status == 200 and "agent_memberships" in resp.json:
            items = resp.json["agent_memberships"]
            assert isinstance(items, list)
            for item in items:
                assert set(item) <= {"id", "ip_address"}
                assert item.get("id", member_ids[0]) in members
    check()


# -- raw HTTP: what the HTTP server itself refuses ---------------------------------------------

raw_methods = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS",
                               "get", "G ET", "", "\x00"]) | st.text(max_size=6)
raw_targets = st.sampled_from([
    "/", PATH, f"{PATH}/", "//v2.0//agent-memberships/", f"{PATH}?%", f"{PATH}?limit=%ff",
    "*", f"{PATH}/%2F..", "/\xff", "/v2.0/extensions?x=\x01", "http://elsewhere/v2.0/",
    "/" + "a" * 5000]) | st.text(max_size=20)
raw_versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.1 x", "", "http/1.1",
                                "HTTP/1.01", "HTTP/1"])
raw_headers = st.lists(st.sampled_from([
    "Host: x", "X-Auth-Token: TOKEN", "Content-Length: 5", "Content-Length: 1, 2",
    "Content-Length: 99999999999999999999999", "Content-Length: -1", "Content-Length: 0x10",
    "Content-Length: 0", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked",
    "Transfer-Encoding: chunked, gzip", "Expect: 100-continue", "Expect: nope",
    "Bad Header", ":x", "X: \x7f", " folded", "\tfolded", "Connection: close",
    "Content-Type: application/json; charset=latin-1", "Content-Type: text/html",
    "X-Roles: admin", "X-Auth-Token: " + "x" * 9000,
]) | st.text(max_size=20).map(lambda t: "X-Random: " + t), max_size=6)
raw_request_bodies = st.sampled_from([
    b"", b"{}", b"5\r\n{}{}{\r\n0\r\n\r\n", b"zz\r\n", b"\xff" * 5, b"0\r\n\r\n",
    b'{"agent_membership": {"id": "x"}}', b"3\r\n{}\r\n",
]) | st.binary(max_size=40)


@pytest.mark.parametrize("fuzz_server", ["sqlite"], indirect=True)  # never reaches the DB
def test_random_raw_http_requests(fuzz_server):
    """Request lines, headers and framing no client library would send: the HTTP server's
    own refusals are Neutron errors with a request id, and nothing is a 500."""
    api = fuzz_server.client()

    @settings(max_examples=RAW_EXAMPLES, **SETTINGS)
    @given(method=raw_methods, target=raw_targets, version=raw_versions,
           headers=raw_headers, body=raw_request_bodies)
    def check(method, target, version, headers, body):
        head = f"{method} {target} {version}\r\n" + "".join(
            h.replace("TOKEN", fuzz_server.token) + "\r\n" for h in headers) + "\r\n"
        before = snapshot(fuzz_server)
        with socket.create_connection(("127.0.0.1", fuzz_server.port), timeout=20) as sock:
            # The server may answer and close before all is sent (a bad request line).
            with contextlib.suppress(OSError):
                sock.sendall(head.encode("utf-8", "surrogateescape") + body)
                sock.shutdown(socket.SHUT_WR)  # no more is coming: never wait for a body
            resp = http.client.HTTPResponse(sock, method="HEAD" if method == "HEAD" else "GET")
            try:
                resp.begin()
                answer = resp.read()
            except ConnectionResetError:
                # Closing with our unread bytes still queued resets the connection, which
                # can discard the answer before we read it: then only check it still serves.
                assert api.get("/").status == 200
                return
            status, headers_in = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        # 501 (an unknown transfer coding) and 505 (an HTTP version) are the HTTP server
        # speaking HTTP, not failures
        assert status < 500 or status in (501, 505), (head, status, answer)
        assert headers_in["x-openstack-request-id"].startswith("req-"), (head, headers_in)
        if status >= 400 and method != "HEAD":
            assert headers_in["content-type"] == "application/json", (head, answer)
            assert list(json.loads(answer)) == ["NeutronError"], (head, answer)
        if status != 201:
            assert snapshot(fuzz_server) == before, head
    check()
