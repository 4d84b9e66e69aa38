"""
Tests of the scans a process keeps (L{popsrv.store.mbox.index}): a login to
a spool that only grew reads what was added, and gives what a whole scan
gives; a spool another program rewrote, replaced or cut is read whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List

import pytest

from popsrv.errors import MessageVanished
from popsrv.messages import MessageInfo
from popsrv.store.mbox import MboxMaildrop, deliver, parsing
from popsrv.store.mbox.index import ScanCache, _Kept
from popsrv.store.mbox.opened import SCANS
from popsrv.store.mbox.parsing import SpoolScan
from tests.store.test_maildir import RecordingConsumer


@pytest.fixture
def readCounter(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """
    Count the octets the scans read from spools.
    """
    counted: List[int] = []
    original = os.pread

    def counting(fd: int, size: int, offset: int) -> bytes:
        data = original(fd, size, offset)
        counted.append(len(data))
        return data

    monkeypatch.setattr(parsing.os, "pread", counting)
    return counted


def makeSpool(path: Path, count: int = 200, first: int = 0) -> None:
    for number in range(first, first + count):
        deliver(str(path), b"Subject: %d\n\n%s" % (number, b"body line of message %d\n" % number * 200),
                sender=f"s{number}@example.org", when=1_700_000_000 + number)


def listing(tmp_path: Path) -> List[MessageInfo]:
    maildrop = MboxMaildrop(str(tmp_path / "alice"), "alice", str(tmp_path / "state"))
    maildrop.lock()
    try:
        return list(maildrop.listMessages())  # type: ignore[arg-type]
    finally:
        maildrop.release()


def wholeScanListing(tmp_path: Path) -> List[MessageInfo]:
    """
    The listing a process that never saw the spool gives.
    """
    SCANS.forget(str(tmp_path / "alice"))
    return listing(tmp_path)


def test_aLoginAfterDeliveriesReadsOnlyWhatWasAdded(tmp_path: Path, readCounter: List[int]) -> None:
    """After new mail, the next login reads the last message and the new ones, and lists what a whole scan would."""
    spool = tmp_path / "alice"
    makeSpool(spool)
    listing(tmp_path)
    assert sum(readCounter) >= spool.stat().st_size
    before = spool.stat().st_size
    makeSpool(spool, 3, first=200)
    readCounter.clear()
    kept = listing(tmp_path)
    # The new mail, the last message, the samples (64 octets per message).
    assert 0 < sum(readCounter) < (spool.stat().st_size - before) + 2 * 10_000 + 2 * 200 * 64
    assert len(kept) == 203
    assert kept == wholeScanListing(tmp_path)


def removeSecond(spool: Path) -> None:
    data = spool.read_bytes()
    second, third = data.index(b"From s1@"), data.index(b"From s2@")
    spool.write_bytes(data[:second] + data[third:])


def addHeaderEarly(spool: Path) -> None:
    spool.write_bytes(spool.read_bytes().replace(b"Subject: 3\n", b"Status: RO\nSubject: 3\n", 1))


def editInTheMiddle(spool: Path) -> None:
    data = spool.read_bytes()
    at = data.index(b"From s101@")
    spool.write_bytes(data[:at] + data[at:].replace(b"Subject: 101\n", b"Subject: 1O1\n", 1))


def replace(spool: Path) -> None:
    copy = spool.with_name("copy")
    copy.write_bytes(spool.read_bytes())
    os.replace(copy, spool)


def cut(spool: Path) -> None:
    os.truncate(spool, spool.stat().st_size // 2)


@pytest.mark.parametrize("change", [removeSecond, addHeaderEarly, editInTheMiddle, replace, cut])
def test_aSpoolChangedOtherwiseIsReadWhole(tmp_path: Path, change: Callable[[Path], None],
                                          readCounter: List[int]) -> None:
    """
    A spool another program rewrote (then more mail arrived, so it is no
    shorter), replaced or cut is read whole: the listing is a whole scan's.
    """
    spool = tmp_path / "alice"
    makeSpool(spool)
    listing(tmp_path)
    change(spool)
    makeSpool(spool, 5, first=300)
    readCounter.clear()
    kept = listing(tmp_path)
    if change is not cut:
        assert sum(readCounter) >= spool.stat().st_size
    assert kept == wholeScanListing(tmp_path)


def test_aRewriteByPopsrvDropsTheKeptScan(tmp_path: Path, readCounter: List[int]) -> None:
    """After QUIT rewrote the spool, the next login reads it whole, and lists the rest."""
    spool = tmp_path / "alice"
    makeSpool(spool, 20)
    maildrop = MboxMaildrop(str(spool), "alice", str(tmp_path / "state"))
    maildrop.lock()
    messages = list(maildrop.listMessages())  # type: ignore[arg-type]
    maildrop.commit(frozenset([messages[3].uid]), frozenset())
    maildrop.release()
    readCounter.clear()
    after = listing(tmp_path)
    assert sum(readCounter) >= spool.stat().st_size
    assert [info.uid for info in after] == [info.uid for info in messages if info.uid != messages[3].uid]


def test_theCacheIsBounded() -> None:
    """The cache keeps at most its capacity of messages, dropping the least recently used spools first."""
    cache = ScanCache(capacity=5)

    def kept(count: int) -> _Kept:
        scan = SpoolScan()
        for _ in range(count):
            scan.starts.append(0)
        return _Kept((1, 1), scan, b"")

    cache.give("a", kept(2))
    cache.give("b", kept(2))
    cache.give("c", kept(2))
    assert cache.take("a") is None
    assert cache.take("b") is not None and cache.take("b") is None
    cache.give("big", kept(6))
    assert cache.take("big") is None and cache.take("c") is not None


def test_aBodyChangedInPlaceIsNoticedAtRetrieval(tmp_path: Path) -> None:
    """
    A message's body changed in place, octet for octet (which no sample
    sees): RETR finds the message is not what the listing said, and the
    next login reads the spool whole and lists it as it is.
    """
    spool = tmp_path / "alice"
    makeSpool(spool, 20)
    listing(tmp_path)
    data = spool.read_bytes()
    at = data.index(b"From s10@")
    spool.write_bytes(data[:at] + data[at:].replace(b"line of message 10", b"line of massage 10", 1))
    maildrop = MboxMaildrop(str(spool), "alice", str(tmp_path / "state"))
    maildrop.lock()
    try:
        stale = list(maildrop.listMessages())  # type: ignore[arg-type]
        results: list = []
        maildrop.sendMessage(stale[10].uid, RecordingConsumer()).addErrback(results.append)
        assert len(results) == 1 and results[0].check(MessageVanished)
    finally:
        maildrop.release()
    fresh = listing(tmp_path)
    assert fresh == wholeScanListing(tmp_path)
    assert fresh[10].uid != stale[10].uid and [m.uid for m in fresh[:10]] == [m.uid for m in stale[:10]]
