"""The poll-based kazoo handler answers select() the way kazoo's connection loop expects."""

from __future__ import annotations

import socket
import time

import pytest

from midonet_membership.nsdb.zookeeper_io import PollThreadingHandler


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_reports_what_is_ready_and_only_that(pair):
    a, b = pair
    select = PollThreadingHandler().select
    assert select([a], [], [], 0) == ([], [], [])
    b.send(b"x")
    assert select([a, b], [], [], 1.0) == ([a], [], [])
    assert select([], [a], [], 1.0) == ([], [a], [])
    assert select([a], [a], [], 1.0) == ([a], [a], [])


def test_waits_for_the_timeout_and_no_longer(pair):
    a, _ = pair
    start = time.monotonic()
    assert PollThreadingHandler().select([a], [], [], 0.05) == ([], [], [])
    assert 0.05 <= time.monotonic() - start < 2


def test_a_hung_up_peer_makes_the_socket_readable(pair):
    a, b = pair
    b.close()
    assert PollThreadingHandler().select([a], [], [], 1.0)[0] == [a]
    assert a.recv(1) == b""  # what kazoo then reads: the connection is gone


def test_a_closed_socket_is_refused_like_kazoo_does(pair):
    a, _ = pair
    a.close()
    with pytest.raises(TypeError):
        PollThreadingHandler().select([a], [], [], 0)
    with pytest.raises(ValueError):
        PollThreadingHandler().select([], [], [], -1)
