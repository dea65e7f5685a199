"""How a long-running command (``all-in-one``, ``importer``, ``agent``) waits for SIGINT or
SIGTERM.

CPython runs a signal's Python handler only in the main thread, when that thread next runs
bytecode. The kernel queues a signal sent to a process for the whole process, and any of its
threads may take it: a thread that is busy with system calls (forking ``nft``, pyroute2's
namespace helper) often does. The main thread, blocked on a lock in ``Event.wait()``, is then
never woken, and the process ignores the SIGTERM that should stop it (an agent did, in CI).
The C-level handler writes to the wakeup fd from whichever thread it runs in, so the main
thread blocks on reading that instead.

A child forked during the wait shares that fd: a signal sent to it (pyroute2 stops its helper
with SIGTERM) wakes the parent too. Only the Python handler, which runs in the process the
signal was sent to, says that a stop signal came.
"""

from __future__ import annotations

import signal
import socket

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[signal.Signals] = []


def wait() -> signal.Signals:
    """Block until SIGINT or SIGTERM is sent to this process, and return it. A later one is
    ignored: the command is already stopping, as it would after the first."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    _received.clear()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _receive)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        while not _received:
            # The handler of a signal to this process has run when the call returns: the
            # C-level handler flags it before it writes, and the call's end runs it.
            reader.recv(1)
        return _received[0]
    finally:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


def _receive(signum: int, frame: object) -> None:
    _received.append(signal.Signals(signum))
