"""Every answer carries the current time in its Date header (RFC 9110 §6.6.1), on both
servers: gunicorn's is formatted once a second (api/server.py), and must still move on."""

from __future__ import annotations

import datetime
import email.utils
import time
import urllib.request


def _date_of_an_answer(server) -> tuple[datetime.datetime, datetime.datetime]:
    req = urllib.request.Request(server.url + "/v2.0/agent-memberships",
                                 headers={"X-Auth-Token": server.token})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        date = email.utils.parsedate_to_datetime(resp.headers["Date"])
    return date, datetime.datetime.now(datetime.UTC)


def test_the_date_header_is_now_and_moves_on(each_server):
    first, now = _date_of_an_answer(each_server)
    assert first.tzinfo is not None and abs((now - first).total_seconds()) < 2
    time.sleep(2.1)
    second, now = _date_of_an_answer(each_server)
    assert abs((now - second).total_seconds()) < 2
    assert (second - first).total_seconds() >= 2
