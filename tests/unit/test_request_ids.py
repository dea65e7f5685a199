"""Request ids: what logs, responses and the journal's ``transaction_id`` carry."""

from __future__ import annotations

import os
import uuid

from midonet_membership.context import new_request_id


def test_a_request_id_is_req_and_a_version_4_uuid_and_never_repeats():
    ids = [new_request_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    for request_id in ids[:2000]:
        assert request_id.startswith("req-")
        parsed = uuid.UUID(request_id[4:])
        assert str(parsed) == request_id[4:]  # canonical, lower case
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


def test_forked_workers_do_not_repeat_each_others_request_ids():
    """gunicorn forks its workers from one process: each must draw its own ids."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then exit without running pytest's teardown
        os.write(write, "\n".join(new_request_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    mine = {new_request_id() for _ in range(100)}
    with os.fdopen(read) as pipe:
        childs = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    assert len(childs) == 100
    assert not mine & childs
