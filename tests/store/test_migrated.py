"""
Tests of Maildirs moved from Dovecot or Courier, served by
L{MaildirMaildrop} with their old server's UIDLs (L{popsrv.store.maildir.migrated}),
on real temporary Maildirs: which file is used, that it is read only
where blocking work may be done and only once per process, that new mail
never takes an old UIDL, and that a hostile file (a link, a FIFO, a huge
or garbage file) never breaks a login, blocks, or shares a uid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs

from popsrv.store.maildir import MaildirMaildrop, migrated
from popsrv.store.maildir.listing import hashedUid
from popsrv.store.realm import MaildirRealm
from popsrv.store.uidlformat import parseUidlFormat
from tests.store.test_maildir import curNames, writeMessage
from tests.store.test_maildir_safety import withinDeadline

NAMES = [f"170000000{n}.M{n}P{n}.host" for n in range(1, 5)]
UIDLIST = (
    b"3 V1796589488 N4 G42706d17b0c7156b0830000083ecc375\n"
    b"1 :1700000001.M1P1.host\n2 :1700000002.M2P2.host,S=20\n3 Pkept-3 :1700000003.M3P3.host\n"
)
DOVECOT = ["000000016b15c7b0", "000000026b15c7b0", "kept-3"]


def makeMaildir(path: Path, uidlist: bytes = UIDLIST, fileName: str = "dovecot-uidlist") -> Path:
    """A Maildir with the messages of L{NAMES}, some in new/, some in cur/, and an old server's file."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    writeMessage(path / "cur", NAMES[0] + ":2,S", b"Subject: 1\n\none\n")
    writeMessage(path / "new", NAMES[1] + ",S=20", b"Subject: 2\n\ntwo\n")
    writeMessage(path / "cur", NAMES[2] + ",S=20,W=21:2,", b"Subject: 3\r\n\r\nthree\r\n")
    (path / fileName).write_bytes(uidlist)
    return path


def snapshot(path: Path, runner: Any = None, uidlFormat: Any = None) -> List[Any]:
    """One session's listing (through C{runner}, if given, which must answer at once)."""
    maildrop = MaildirMaildrop(str(path), "alice", runner=runner, uidlFormat=uidlFormat)
    maildrop.lock()
    try:
        listed = maildrop.listMessages()
        if isinstance(listed, defer.Deferred):
            result: List[Any] = []
            listed.addCallback(result.extend)
            return result
        return list(listed)
    finally:
        maildrop.release()


@pytest.fixture(autouse=True)
def forget() -> None:
    """Each test starts with nothing kept."""
    migrated.TABLES.clear()
    migrated.SERVED.clear()


def test_servedWithDovecotsUidls(tmp_path: Path) -> None:
    """A Maildir with a dovecot-uidlist is served with the UIDLs Dovecot showed; new mail follows."""
    maildir = makeMaildir(tmp_path)
    writeMessage(maildir / "new", "1600000000.M0P0.early", b"Subject: new\n\nnew\n")
    uids = [info.uid for info in snapshot(maildir)]
    assert uids == [*DOVECOT, "1600000000.M0P0.early"]


def test_uidlFormatGivenByTheRealm(tmp_path: Path) -> None:
    """The realm gives its maildrops the --uidl-format."""
    makeMaildir(tmp_path / "alice")
    realm = MaildirRealm(str(tmp_path), uidlFormat=parseUidlFormat("%v.%u"))
    maildrop = realm.maildropFor("alice")
    maildrop.lock()
    try:
        assert [info.uid for info in maildrop.listMessages()] == ["1796589488.1", "1796589488.2", "kept-3"]
    finally:
        maildrop.release()


def test_readOnceThroughTheRunnerThenKept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The file is read through the runner (blocking work), once: later
    logins use what was kept, and list at once (no runner) when nothing
    else needs it; a changed file is read again.
    """
    maildir = makeMaildir(tmp_path)
    snapshot(maildir)
    reads = []
    real = migrated.readUidlist
    monkeypatch.setattr(migrated, "readUidlist", lambda *args: reads.append(1) or real(*args))
    migrated.TABLES.clear()
    calls = []

    def runner(function: Any, *args: Any) -> Any:
        calls.append(function.__name__)
        return defer.succeed(function(*args))

    assert [info.uid for info in snapshot(maildir, runner)] == DOVECOT
    assert calls == ["_snapshot"] and len(reads) == 1
    for _ in range(3):
        assert [info.uid for info in snapshot(maildir, lambda *a: pytest.fail("not at once"))] == DOVECOT
    assert len(reads) == 1
    (maildir / "dovecot-uidlist").write_bytes(UIDLIST.replace(b"Pkept-3", b"Pchanged"))
    assert [info.uid for info in snapshot(maildir, runner)][2] == "changed"
    assert len(reads) == 2


def test_newMailNeverTakesAnOldUidl(tmp_path: Path) -> None:
    """
    Mail delivered later gets popsrv's own uid, except a message named like
    an old UIDL (even of a message since deleted): it gets a hash; old
    messages keep theirs, before and after.
    """
    maildir = makeMaildir(tmp_path)
    first = [info.uid for info in snapshot(maildir)]
    maildrop = MaildirMaildrop(str(maildir), "alice")
    maildrop.lock()
    maildrop.listMessages()
    maildrop.commit(frozenset(["kept-3"]), frozenset())
    maildrop.release()
    writeMessage(maildir / "new", "kept-3", b"Subject: evil\n\nevil\n")
    writeMessage(maildir / "new", DOVECOT[0], b"Subject: evil\n\nevil\n")
    writeMessage(maildir / "new", "1800000000.M1P1.later", b"Subject: later\n\nlater\n")
    with capturedLogs() as events:
        uids = [info.uid for info in snapshot(maildir)]
    assert uids[:2] == first[:2]
    expected = [hashedUid("kept-3\x001"), hashedUid(DOVECOT[0] + "\x001"), "1800000000.M1P1.later"]
    assert sorted(uids[2:]) == sorted(expected)
    assert len(set(uids)) == len(uids)
    [collision] = [event for event in events if event.get("event") == "uid-collision"]
    assert collision["count"] == 2


def test_commitAndSeenWithOldUidls(tmp_path: Path) -> None:
    """DELE and RETR act on the message of the old UIDL: the right file is removed, the right one marked seen."""
    maildir = makeMaildir(tmp_path)
    maildrop = MaildirMaildrop(str(maildir), "alice")
    maildrop.lock()
    listed = list(maildrop.listMessages())
    assert [info.seen for info in listed] == [True, False, False]
    maildrop.commit(frozenset([DOVECOT[1]]), frozenset(["kept-3"]))
    maildrop.release()
    assert curNames(maildir) == [NAMES[0] + ",S=16,W=19:2,S", NAMES[2] + ",S=20,W=21:2,S"]
    assert [info.uid for info in snapshot(maildir)] == [DOVECOT[0], "kept-3"]


def test_dovecotWinsOverCourier(tmp_path: Path) -> None:
    """With both files, Dovecot's is used (a Courier file beside it is left from before a move to Dovecot)."""
    maildir = makeMaildir(tmp_path)
    (maildir / "courierpop3dsizelist").write_bytes(b"/3 9 9\n1700000001.M1P1.host 17 1:9:0\n")
    assert [info.uid for info in snapshot(maildir)] == DOVECOT


def test_courierSizelist(tmp_path: Path) -> None:
    """A Maildir with only a courierpop3dsizelist is served with Courier's UIDLs."""
    sizelist = b"/3 4 9\n1700000001.M1P1.host:2,S 17 1:9:0\n1700000002.M2P2.host,S=20 17 2:9:0\n"
    maildir = makeMaildir(tmp_path, sizelist, "courierpop3dsizelist")
    assert [info.uid for info in snapshot(maildir)] == ["UID1-9", "UID2-9", "1700000003.M3P3.host"]


def test_courierImapUidDatabaseIsNotRead(tmp_path: Path) -> None:
    """courierimapuiddb holds IMAP UIDs, which Courier's pop3d never showed: popsrv's own UIDLs are served."""
    maildir = makeMaildir(tmp_path, b"1 9 4\n1 1700000001.M1P1.host\n", "courierimapuiddb")
    assert [info.uid for info in snapshot(maildir)] == NAMES[:3]


def refusedEvents(events: List[Any]) -> List[Any]:
    return [event for event in events if event.get("event") == "uidlist-refused"]


def test_symlinkIsRefused(tmp_path: Path) -> None:
    """A dovecot-uidlist that is a link (to another user's, say) is not followed: popsrv's own UIDLs, logged."""
    other = tmp_path / "other-uidlist"
    other.write_bytes(UIDLIST)
    maildir = makeMaildir(tmp_path / "alice")
    os.unlink(maildir / "dovecot-uidlist")
    os.symlink(other, maildir / "dovecot-uidlist")
    with capturedLogs() as events:
        uids = [info.uid for info in snapshot(maildir)]
    assert uids == NAMES[:3]
    [refused] = refusedEvents(events)
    assert refused["log_level"] == LogLevel.warn and "not a regular file" in refused["why"]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_fifoOrDirectoryIsRefusedWithoutBlocking(tmp_path: Path, kind: str) -> None:
    """A FIFO (which would block an open) or a directory in its place is refused at once, on any thread."""
    maildir = makeMaildir(tmp_path)
    os.unlink(maildir / "dovecot-uidlist")
    fifos = []
    if kind == "fifo":
        os.mkfifo(maildir / "dovecot-uidlist")
        fifos.append(maildir / "dovecot-uidlist")
    else:
        os.mkdir(maildir / "dovecot-uidlist")
    with capturedLogs() as events:
        uids = withinDeadline(lambda: [info.uid for info in snapshot(maildir)], fifos)
    assert uids == NAMES[:3]
    assert len(refusedEvents(events)) == 1
    # A login that lists at once (nothing to measure) does not block either.
    uids = withinDeadline(lambda: [info.uid for info in snapshot(maildir, lambda *a: pytest.fail("runner"))], fifos)
    assert uids == NAMES[:3]


def test_hugeFileIsRefusedUnread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file larger than the limit is refused from its size, without reading it, and logged once."""
    monkeypatch.setattr(migrated, "MAX_FILE_SIZE", len(UIDLIST) - 1)
    monkeypatch.setattr(migrated, "_read", lambda *a: pytest.fail("read"))
    maildir = makeMaildir(tmp_path)
    with capturedLogs() as events:
        assert [info.uid for info in snapshot(maildir)] == NAMES[:3]
        assert [info.uid for info in snapshot(maildir)] == NAMES[:3]
    [refused] = refusedEvents(events)
    assert "larger than" in refused["why"]


def test_fileGrowingWhileReadIsRefused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grows past the limit between its fstat and its reading is refused all the same."""
    maildir = makeMaildir(tmp_path)
    monkeypatch.setattr(migrated, "MAX_FILE_SIZE", len(UIDLIST) + 10)
    monkeypatch.setattr(migrated, "READ_CHUNK", 16)
    real = migrated._read

    def grow(opened: Any, *args: Any) -> Any:
        with open(maildir / "dovecot-uidlist", "ab") as appended:
            appended.write(b"4 :x\n" * 10)
        return real(opened, *args)

    monkeypatch.setattr(migrated, "_read", grow)
    with capturedLogs() as events:
        assert [info.uid for info in snapshot(maildir)] == NAMES[:3]
    assert "larger than" in refusedEvents(events)[0]["why"]


@pytest.mark.parametrize(
    ("fileName", "header", "line"),
    [("dovecot-uidlist", b"3 V1 N1\n", b"%d :%x\n"), ("courierpop3dsizelist", b"/3 1 1\n", b"%x 0 %d:1\n")],
)
def test_fileOfTooManyLinesIsRefusedUnparsed(tmp_path: Path, fileName: str, header: bytes, line: bytes) -> None:
    """
    A file under the size limit but of more short lines than a file of that
    size of its server's holds (whose parsing would take gigabytes) is
    refused without being parsed, and logged.
    """
    count = migrated.MAX_LINES + 1
    content = header + b"".join(line % (number, number) for number in range(1, count + 1))
    assert len(content) < migrated.MAX_FILE_SIZE
    maildir = makeMaildir(tmp_path, content, fileName)
    with capturedLogs() as events:
        uids = [info.uid for info in snapshot(maildir)]
    assert uids == NAMES[:3]
    [refused] = refusedEvents(events)
    assert f"more than {migrated.MAX_LINES} lines" in refused["why"]


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"\xff" * 5000, b"3 V1 N2\n" + os.urandom(20000), b"3 V1 N2\n" + b"1 :" + b"x" * 2_000_000],
)
def test_garbageNeverBreaksALogin(tmp_path: Path, content: bytes) -> None:
    """Whatever the file holds, the login lists every message with unique uids."""
    maildir = makeMaildir(tmp_path, content)
    uids = [info.uid for info in snapshot(maildir)]
    assert len(uids) == len(set(uids)) == 3


def test_faultsAreLoggedOncePerFile(tmp_path: Path) -> None:
    """Lines and UIDLs not used are logged when the file is read, not at every login; so is what was kept."""
    maildir = makeMaildir(tmp_path, UIDLIST + b"garbage\n4 P\x01 :1700000004.M4P4.host\n")
    writeMessage(maildir / "cur", NAMES[3] + ",W=5:2,", b"four\n")
    with capturedLogs() as events:
        snapshot(maildir)
        snapshot(maildir)
    assert [event["event"] for event in events if event.get("event")] == [
        "uidlist-lines-skipped", "uidl-refused", "old-uidls",
    ]
    kept = events[-1]
    assert (kept["matched"], kept["total"], kept["source"]) == (3, 4, "dovecot-uidlist")
