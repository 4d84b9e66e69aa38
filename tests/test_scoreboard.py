"""
Tests for L{popsrv.scoreboard}: address keys, rows shared between
processes through the mapped file, the bounded table's eviction, and
clearing a process's column.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Iterator

import pytest
from twisted.logger import capturedLogs

from popsrv.scoreboard import WAYS, Row, Scoreboard, TableFull, addressKey
from tests.support.servers import twistdEnvironment


@pytest.fixture
def board() -> Iterator[Scoreboard]:
    scoreboard = Scoreboard.create(columns=2, capacity=64)
    yield scoreboard
    scoreboard.close()


def connect(row: Row) -> int:
    row.connections[row.column] += 1
    return row.totalConnections


def test_addressKeys() -> None:
    """
    IPv4 addresses are their own keys, also mapped into IPv6; IPv6
    addresses are keyed by their /64; other peers share one key.
    """
    assert addressKey("192.0.2.1") == addressKey("::ffff:192.0.2.1")
    assert addressKey("192.0.2.1") != addressKey("192.0.2.2")
    assert addressKey("2001:db8:1:2::1") == addressKey("2001:db8:1:2:ffff::9")
    assert addressKey("2001:db8:1:2::1") != addressKey("2001:db8:1:3::1")
    assert addressKey("fe80::1%eth0") == addressKey("fe80::2")
    assert addressKey("/run/popsrv.sock") == addressKey("") == addressKey("not an address")
    assert len({len(addressKey(a)) for a in ["1.2.3.4", "::1", "x"]}) == 1


def test_updatesAreKeptAndCounted(board: Scoreboard) -> None:
    """
    What an update changes stays; each column's connections add up to
    the total.
    """
    assert board.update(addressKey("192.0.2.1"), 1.0, connect) == 1
    assert board.update(addressKey("192.0.2.1"), 2.0, connect) == 2
    assert board.update(addressKey("192.0.2.9"), 3.0, connect) == 1
    assert board.total() == 3
    row = board.peek(addressKey("192.0.2.1"))
    assert row is not None and row.connections == [2, 0] and row.lastSeen == 2.0
    assert board.peek(addressKey("192.0.2.2")) is None


def test_sharedWithAnotherProcess(board: Scoreboard) -> None:
    """
    A process that attaches to the inherited descriptor sees and changes
    the same rows, in its own column.
    """
    board.update(addressKey("192.0.2.1"), 1.0, connect)
    script = (
        "import sys\n"
        "from popsrv.scoreboard import Scoreboard, addressKey\n"
        "board = Scoreboard.attach(int(sys.argv[1]), 1)\n"
        "def change(row):\n"
        "    row.connections[row.column] += 5\n"
        "    return row.totalConnections\n"
        "print(board.update(addressKey('192.0.2.1'), 2.0, change), board.total())\n"
    )
    fd = board.fileno()
    result = subprocess.run(
        [sys.executable, "-c", script, str(fd)], pass_fds=[fd], capture_output=True, env=twistdEnvironment(),
        timeout=60, check=True,
    )
    assert result.stdout.split() == [b"6", b"6"]
    row = board.peek(addressKey("192.0.2.1"))
    assert row is not None and row.connections == [1, 5]
    assert board.total() == 6
    board.clearColumn(1)
    row = board.peek(addressKey("192.0.2.1"))
    assert row is not None and row.connections == [1, 0]
    assert board.total() == 1


def test_boundedTableForgetsQuietAddressesFirst() -> None:
    """
    A set full of addresses with open connections takes no more (the
    update is refused, nothing changed); otherwise the least recently seen address
    without connections makes room.
    """
    board = Scoreboard.create(columns=1, capacity=WAYS)
    try:
        keys = [addressKey(f"192.0.2.{n}") for n in range(WAYS + 1)]
        for n, key in enumerate(keys[:WAYS]):
            assert board.update(key, float(n), connect) == 1
        with pytest.raises(TableFull):
            board.update(keys[WAYS], 100.0, connect)
        assert board.total() == WAYS

        def leave(row: Row) -> None:
            row.connections[row.column] -= 1

        board.update(keys[3], 101.0, leave)
        board.update(keys[5], 102.0, leave)
        assert board.update(keys[WAYS], 103.0, connect) == 1
        assert board.peek(keys[3]) is None
        assert board.peek(keys[5]) is not None
    finally:
        board.close()


def test_hostileAddressesCannotOverfill(board: Scoreboard) -> None:
    """
    Many more addresses than rows: updates keep working, nothing grows,
    and a live address is never evicted.
    """
    size = os.fstat(board.fileno()).st_size
    board.update(addressKey("198.51.100.1"), 0.0, connect)
    for n in range(2000):
        board.update(addressKey(f"2001:db8:{n:x}::1"), float(n), lambda row: None)
    assert os.fstat(board.fileno()).st_size == size
    row = board.peek(addressKey("198.51.100.1"))
    assert row is not None and row.totalConnections == 1


def test_notAScoreboard(tmp_path) -> None:
    """
    Attaching to a file that is not a scoreboard, or to a column it does
    not have, is refused.
    """
    path = tmp_path / "x"
    path.write_bytes(b"\0" * 4096)
    fd = os.open(path, os.O_RDWR)
    with pytest.raises(ValueError, match="not a popsrv scoreboard"):
        Scoreboard.attach(fd, 0)
    os.close(fd)
    board = Scoreboard.create(columns=1, capacity=WAYS)
    with pytest.raises(ValueError, match="column 1"):
        Scoreboard.attach(os.dup(board.fileno()), 1)
    board.close()


@pytest.mark.parametrize("shared", [True, False])
def test_aTableOfOneProcessTakesNoLock(monkeypatch: pytest.MonkeyPatch, shared: bool) -> None:
    """
    A table other processes use is locked for every update; one that this
    process alone uses (no --workers) is not, and counts all the same.
    """
    import fcntl

    locks = []
    monkeypatch.setattr(fcntl, "lockf", lambda fd, operation: locks.append(operation))
    board = Scoreboard.create(columns=1, capacity=64, shared=shared)
    try:
        board.update(addressKey("192.0.2.1"), 1.0, lambda row: setattr(row, "failures", row.failures + 1))
        assert board.update(addressKey("192.0.2.1"), 2.0, lambda row: row.failures) == 1
        assert (len(locks) > 0) is shared
    finally:
        board.close()


HOLDER = """
import fcntl, sys
fd = int(sys.argv[1])
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_aLockHeldTooLongIsPassedBy(board: Scoreboard, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    While another process holds the table's lock (stopped while it held
    it), an update waits L{LOCK_PATIENCE} once, then goes on without the
    lock, logging why once; during L{LOCK_RESPITE} updates wait only
    L{RESPITE_PATIENCE}, and they take the lock again once it is free.
    """
    import fcntl
    import time

    from popsrv import scoreboard

    monkeypatch.setattr(scoreboard, "LOCK_PATIENCE", 0.05)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(board.fileno())], pass_fds=(board.fileno(),),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == b"held\n"
        waited = []
        sleep = time.sleep
        monkeypatch.setattr(scoreboard.time, "sleep", lambda seconds: waited.append(seconds) or sleep(seconds))
        with capturedLogs() as events:
            assert board.update(addressKey("192.0.2.1"), 1.0, connect) == 1
            assert sum(waited) >= 0.05 / 2
            waited.clear()
            assert board.update(addressKey("192.0.2.1"), 2.0, connect) == 2
            assert board.total() == 2
        # Two calls, each waiting a moment only, not LOCK_PATIENCE (0.05 s here).
        assert 0 < sum(waited) < 0.05
        held = [event for event in events if event.get("event") == "scoreboard-lock-held"]
        assert len(held) == 1 and "Traceback" not in str(held[0])
    finally:
        holder.stdin.close()
        holder.wait(20)
        holder.stdout.close()
    taken = []
    lockf = fcntl.lockf
    monkeypatch.setattr(fcntl, "lockf", lambda fd, operation: taken.append(operation) or lockf(fd, operation))
    monkeypatch.setattr(board, "_impatientUntil", 0.0)
    assert board.update(addressKey("192.0.2.1"), 3.0, connect) == 3
    assert taken == [fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN]


def test_aLockHeldBrieflyIsWaitedFor(board: Scoreboard, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A lock another process holds for a moment (less than
    L{LOCK_PATIENCE}, made long here) is waited for, and taken.
    """
    from popsrv import scoreboard

    monkeypatch.setattr(scoreboard, "LOCK_PATIENCE", 60.0)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(board.fileno())], pass_fds=(board.fileno(),),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == b"held\n"
    holder.stdin.close()
    with capturedLogs() as events:
        assert board.update(addressKey("192.0.2.1"), 1.0, connect) == 1
    holder.wait(20)
    holder.stdout.close()
    assert [event for event in events if event.get("event") == "scoreboard-lock-held"] == []


def test_anUpdateWritesOnlyItsOwnColumn(board: Scoreboard) -> None:
    """
    An update stores the row's shared fields and its own process's column
    only: another process's count changed meanwhile (as may happen without
    the lock) is never undone.
    """
    other = Scoreboard.attach(os.dup(board.fileno()), 1)
    key = addressKey("192.0.2.1")
    try:
        board.update(key, 1.0, connect)

        def connectWhileTheOtherConnects(row: Row) -> int:
            other.update(key, 1.5, connect)
            return connect(row)

        board.update(key, 2.0, connectWhileTheOtherConnects)
        row = board.peek(key)
        assert row is not None and row.connections == [2, 1]
        assert board.total() == 3
    finally:
        other.close()


def test_clearingAColumnTakesNoLock(board: Scoreboard, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Clearing an ended process's column (a sweep of the whole table, which
    no other process writes) takes no lock, so it never holds up the
    others' updates.
    """
    import fcntl

    board.update(addressKey("192.0.2.1"), 1.0, connect)
    locks = []
    monkeypatch.setattr(fcntl, "lockf", lambda fd, operation: locks.append(operation))
    board.clearColumn(0)
    assert locks == []
    monkeypatch.undo()
    row = board.peek(addressKey("192.0.2.1"))
    assert row is not None and row.connections == [0, 0] and board.total() == 0


def test_clearingAColumnOfAFreshTableWritesNothing(tmp_path) -> None:
    """
    A new worker's column is cleared without writing to the rows of a
    table that has none in use: its pages are never made (the parent of 2
    workers kept 3.7 MB of zeros before).
    """
    board = Scoreboard.create(columns=2, capacity=2**15, directory=str(tmp_path))
    try:
        size = os.fstat(board.fileno()).st_size
        assert size > 2**20
        board.clearColumn(0)
        board.clearColumn(1)
        assert os.fstat(board.fileno()).st_blocks * 512 < 64 * 1024
        # A row in use far into the table is cleared all the same.
        keys = [addressKey(f"198.51.100.{n}") for n in range(200)]
        for key in keys:
            board.update(key, 1.0, connect)
        board.clearColumn(0)
        assert board.total() == 0
        assert all(board.peek(key).connections == [0, 0] for key in keys)  # type: ignore[union-attr]
    finally:
        board.close()


def test_whereHolesCannotBeFoundTheWholeTableIsData(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    On a file system that cannot tell data from holes, the whole table is
    swept.
    """
    board = Scoreboard.create(columns=2, capacity=WAYS * 64)
    try:

        def noSeekData(fd: int, position: int, how: int) -> int:
            raise OSError(22, "Invalid argument")

        monkeypatch.setattr(os, "lseek", noSeekData)
        assert list(board._dataRegions()) == [(0, os.fstat(board.fileno()).st_size)]
    finally:
        board.close()


def test_aColumnThatCountedIsSweptWhole(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A column that counted connections is swept whole, even where the file
    system (wrongly) reports no data at all.
    """
    board = Scoreboard.create(columns=2, capacity=WAYS * 64)
    try:
        keys = [addressKey(f"198.51.100.{n}") for n in range(40)]
        for key in keys:
            board.update(key, 1.0, connect)

        def allHoles(fd: int, position: int, how: int) -> int:
            raise OSError(6, "No such device or address")

        monkeypatch.setattr(os, "lseek", allHoles)
        board.clearColumn(0)
        monkeypatch.undo()
        assert board.total() == 0
        assert all(board.peek(key).connections == [0, 0] for key in keys)  # type: ignore[union-attr]
    finally:
        board.close()
