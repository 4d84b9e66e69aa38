"""
A graceful stop: SIGTERM stops accepting at once, open sessions have
--shutdown-grace seconds to finish (QUIT applies deletions), the rest are
closed without applying any, and the process exits within the grace plus
two seconds; in one process and with workers.
"""

from __future__ import annotations

import os
import poplib
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from twisted.internet.task import Clock

from popsrv.app.shutdown import GracefulShutdown
from popsrv.store.maildir import deliver

if TYPE_CHECKING:
    from tests.support.servers import Launcher

HOST = "127.0.0.1"
GRACE = 3.0


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Connection:
    def __init__(self) -> None:
        self.transport = _Transport()


class _Factory:
    def __init__(self) -> None:
        self.connections: set[_Connection] = set()


def test_waitsForTheGraceThenCloses() -> None:
    """
    Stopping waits while sessions are open, for the grace at most; those
    left are aborted; without sessions it stops at once.
    """
    clock = Clock()
    factory = _Factory()
    leaving, staying = _Connection(), _Connection()
    factory.connections |= {leaving, staying}
    service = GracefulShutdown([factory], clock, 10)  # type: ignore[list-item]
    service.startService()
    stopped = service.stopService()
    clock.advance(5)
    factory.connections.discard(leaving)
    clock.advance(4.9)
    assert not stopped.called
    clock.advance(0.2)
    assert stopped.called
    assert staying.transport.aborted and not leaving.transport.aborted
    empty = GracefulShutdown([_Factory()], clock, 10)  # type: ignore[list-item]
    empty.startService()
    assert empty.stopService().called


@pytest.mark.parametrize("workers", [1, 2])
def test_sigtermLetsSessionsFinish(launcher: Launcher, workers: int) -> None:
    """
    After SIGTERM nobody new is served; a session that QUITs within the
    grace has its deletion applied; one still open at the end of the grace
    is closed with its deletion not applied; the process exits within the
    grace and two seconds.
    """
    server = launcher.popsrv("--workers", str(workers), "--shutdown-grace", str(GRACE))
    for index in range(workers if workers > 1 else 0):
        server.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    deliver(server.maildir("alice"), b"Subject: a\r\n\r\nfor alice\r\n")
    deliver(server.maildir("bob"), b"Subject: b\r\n\r\nfor bob\r\n")
    quitting = poplib.POP3(HOST, server.port, timeout=30)
    quitting.user("alice")
    quitting.pass_("secret")
    quitting.dele(1)
    lingering = poplib.POP3(HOST, server.port, timeout=30)
    lingering.user("bob")
    lingering.pass_("hunter2")
    lingering.dele(1)
    mark = server.twistd.mark()
    stopped = time.monotonic()
    server.twistd.process.send_signal(signal.SIGTERM)
    server.twistd.waitFor(r"sessions have 3(\.0)? s to finish", since=mark)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((HOST, server.port), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "still accepting after SIGTERM"
    assert quitting.quit().startswith(b"+OK")
    assert lingering.noop().startswith(b"+OK")  # within the grace
    lingering.sock.settimeout(GRACE + 10)
    try:
        assert lingering.sock.recv(100) == b""
    except ConnectionResetError:
        pass
    server.twistd.process.wait(timeout=GRACE + 10)
    assert time.monotonic() - stopped <= GRACE + 2 + 1
    assert os.listdir(Path(server.maildir("alice")) / "cur") == []
    assert len(os.listdir(Path(server.maildir("bob")) / "cur")) == 1
    server.twistd.waitFor(r"closed 1 sessions at the end of the shutdown grace", since=mark)
