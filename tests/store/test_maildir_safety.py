"""
Tests that a Maildir's owner cannot make popsrv read, serve, move or delete
anything but the owner's own message files: its directories are used
through the descriptors opened at login, whatever is renamed or linked in
their place later; only regular files are served; nothing of unbounded
cost (a FIFO, a huge file to measure) blocks the reactor thread.

Every swap is made between two calls of the maildrop, on real temporary
Maildirs, so the tests are deterministic.
"""

from __future__ import annotations

import errno
import os
import poplib
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import LogLevel, capturedLogs

from popsrv.errors import MaildropError, MaildropLocked, MaildropUnusable, MessageVanished
from popsrv.store.maildir import LOCK_FILE, MaildirMaildrop, deliver, uidFor
from popsrv.threads import threadRunner
from tests.store.test_maildir import curNames, listOnce, sendResult, writeMessage
from tests.support.servers import Launcher, ReactorThread, TwistdProcess

DEADLINE = 10.0
# How long a POP3 client of the end-to-end test waits for a reply.
CLIENT_TIMEOUT = 10.0

_T = TypeVar("_T")


# Helpers


def unblockReaders(fifo: Path) -> None:
    """
    Open a FIFO for writing and close it at once: a reader blocked opening
    it goes on, and reads an end of file.
    """
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.ENOENT):
            return
        raise
    os.close(fd)


def withinDeadline(function: Callable[[], _T], fifos: Iterable[Path] = ()) -> _T:
    """
    Call C{function} in a thread of its own and return what it returns (or
    raise what it raises); fail if it is not done within L{DEADLINE}, after
    unblocking whatever is stuck opening one of C{fifos}, so that the
    thread ends.
    """
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as error:
            outcome.append((False, error))

    thread = threading.Thread(target=run, name="deadline", daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        for fifo in fifos:
            unblockReaders(fifo)
        thread.join(DEADLINE)
        pytest.fail(f"{function!r} did not return within {DEADLINE}s (blocked on a FIFO?)")
    succeeded, value = outcome[0]
    if not succeeded:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def swapForLink(directory: Path, target: Path) -> Path:
    """
    Move a directory aside and put a symbolic link to C{target} in its
    place, as a user who can write to the parent directory can; return
    where the directory went.
    """
    moved = directory.with_name(directory.name + ".moved")
    os.rename(directory, moved)
    os.symlink(target, directory)
    return moved


def messageName(number: int, content: bytes, flags: str = "") -> str:
    """
    A cur/ name of a message with its sizes recorded (C{content} has CRLF
    line ends).
    """
    return f"{1000 + number}.M1P1.host,S={len(content)},W={len(content)}:2,{flags}"


ALICE = {0: b"alice's own 0\r\n", 1: b"alice's own 1\r\n"}
BOB = {0: b"bob's secret 0\r\n", 1: b"bob's secret 1\r\n", 2: b"bob's secret 2\r\n"}


def twoUsers(tmp_path: Path) -> tuple[Path, Path]:
    """
    Make alice's and bob's Maildirs, whose messages have the same file
    names (bob has one more): a name resolved in the wrong Maildir finds
    bob's message.
    """
    paths = []
    for user, messages in (("alice", ALICE), ("bob", BOB)):
        maildir = tmp_path / user
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for number, content in messages.items():
            writeMessage(maildir / "cur", messageName(number, content), content)
        paths.append(maildir)
    return paths[0], paths[1]


def contentsOf(directory: Path) -> dict[str, bytes]:
    """
    Every file of a directory, name to content.
    """
    return {name: (directory / name).read_bytes() for name in os.listdir(directory)}


def uidOf(number: int, messages: dict[int, bytes]) -> str:
    """
    The uid of message C{number} of L{twoUsers}' Maildirs.
    """
    return uidFor(messageName(number, messages[number]).partition(":")[0])


def openDescriptors() -> int:
    """
    How many file descriptors this process has open.
    """
    return len(os.listdir("/proc/self/fd"))


# 1. Directories replaced by links after lock()


@pytest.mark.parametrize("swapped", ["cur", "maildir"])
def test_swappedCurBeforeListingListsOwnMail(tmp_path: Path, swapped: str) -> None:
    """
    cur/ (or the whole Maildir) replaced by a link to another user's after
    lock() and before listMessages(): the listing is still the locked
    Maildir's, and RETR serves its own messages.
    """
    alice, bob = twoUsers(tmp_path)
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    try:
        if swapped == "cur":
            swapForLink(alice / "cur", bob / "cur")
        else:
            swapForLink(alice, bob)
        snapshot = maildrop.listMessages()
        assert sorted(info.uid for info in snapshot) == sorted(uidOf(n, ALICE) for n in ALICE)
        consumer, result = sendResult(maildrop, uidOf(0, ALICE))
        assert result is None
        assert b"".join(consumer.writes) == ALICE[0]
    finally:
        maildrop.release()


@pytest.mark.parametrize("swapped", ["cur", "maildir"])
def test_swappedCurBeforeRetrServesOwnMail(tmp_path: Path, swapped: str) -> None:
    """
    cur/ (or the whole Maildir) replaced by a link to another user's after
    the snapshot: RETR sends the locked Maildir's message, never the other
    user's file of the same name.
    """
    alice, bob = twoUsers(tmp_path)
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    try:
        maildrop.listMessages()
        if swapped == "cur":
            swapForLink(alice / "cur", bob / "cur")
        else:
            swapForLink(alice, bob)
        for number in ALICE:
            consumer, result = sendResult(maildrop, uidOf(number, ALICE))
            assert result is None
            assert b"".join(consumer.writes) == ALICE[number]
    finally:
        maildrop.release()


@pytest.mark.parametrize("swapped", ["cur", "maildir"])
def test_swappedCurBeforeCommitTouchesNoOtherMail(tmp_path: Path, swapped: str) -> None:
    """
    cur/ (or the whole Maildir) replaced by a link to another user's after
    the snapshot: DELE and RETR then QUIT delete and mark seen the locked
    Maildir's messages, and leave the other user's alone.
    """
    alice, bob = twoUsers(tmp_path)
    bobBefore = contentsOf(bob / "cur")
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    try:
        maildrop.listMessages()
        if swapped == "cur":
            moved = swapForLink(alice / "cur", bob / "cur")
        else:
            moved = swapForLink(alice, bob) / "cur"
        maildrop.commit(frozenset({uidOf(0, ALICE)}), frozenset({uidOf(1, ALICE)}))
    finally:
        maildrop.release()
    assert contentsOf(bob / "cur") == bobBefore
    assert contentsOf(moved) == {messageName(1, ALICE[1], "S"): ALICE[1]}


@pytest.mark.parametrize("swapped", ["new", "maildir"])
def test_swappedNewBeforeListingTakesNoOtherMail(tmp_path: Path, swapped: str) -> None:
    """
    new/ (or the whole Maildir) replaced by a link to another directory
    after lock(): listing takes only the locked Maildir's new mail, and
    moves nothing out of the other directory (a server running as root
    must not move a file it alone can read into the user's cur/).
    """
    alice, bob = twoUsers(tmp_path)
    ownNew = deliver(str(alice), b"Subject: alice's new\n\nbody\n")
    otherNew = deliver(str(bob), b"Subject: bob's new\n\nsecret\n")
    bobBefore = {sub: contentsOf(bob / sub) for sub in ("cur", "new")}
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    try:
        if swapped == "new":
            swapForLink(alice / "new", bob / "new")
        else:
            swapForLink(alice, bob)
        snapshot = maildrop.listMessages()
        uids = sorted(info.uid for info in snapshot)
    finally:
        maildrop.release()
    assert uids == sorted([ownNew] + [uidOf(n, ALICE) for n in ALICE])
    assert otherNew not in uids
    assert {sub: contentsOf(bob / sub) for sub in ("cur", "new")} == bobBefore


def test_symlinkedMaildirRefusedAtLock(tmp_path: Path) -> None:
    """
    A Maildir that is itself a link (to another user's) is not served, and
    nothing stays open.
    """
    _, bob = twoUsers(tmp_path)
    os.symlink(bob, tmp_path / "mallory")
    baseline = openDescriptors()
    with pytest.raises(MaildropUnusable, match="not a directory"):
        MaildirMaildrop(str(tmp_path / "mallory"), "mallory").lock()
    assert openDescriptors() == baseline


# 2. Message files that are not regular files


def test_linkInPlaceOfListedMessageVanishes(tmp_path: Path) -> None:
    """
    A listed message replaced by a link to a file outside the Maildir is
    never served: RETR finds it vanished.
    """
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:the-password-hash\n")
    alice, _ = twoUsers(tmp_path)
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    try:
        maildrop.listMessages()
        name = messageName(0, ALICE[0])
        os.unlink(alice / "cur" / name)
        os.symlink(secret, alice / "cur" / name)
        consumer, result = sendResult(maildrop, uidOf(0, ALICE))
        assert result.check(MessageVanished)
        assert consumer.writes == []
        assert consumer.registrations == 0
    finally:
        maildrop.release()


def replaceWithNonFile(path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Put a directory or a Unix socket in place of the file C{path} (the
    socket bound by a relative name: the path may be too long for one).
    """
    os.unlink(path)
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(b"not a message\n")
        return
    monkeypatch.chdir(path.parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path.name)
    listener.close()


@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_nonFileInPlaceOfListedMessageVanishes(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A listed message replaced by a directory or a socket is never served:
    RETR finds it vanished, and the session goes on.
    """
    alice, _ = twoUsers(tmp_path)
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    try:
        maildrop.listMessages()
        replaceWithNonFile(alice / "cur" / messageName(0, ALICE[0]), kind, monkeypatch)
        consumer, result = sendResult(maildrop, uidOf(0, ALICE))
        assert result.check(MessageVanished)
        assert consumer.writes == []
        consumer, result = sendResult(maildrop, uidOf(1, ALICE))
        assert b"".join(consumer.writes) == ALICE[1]
    finally:
        maildrop.release()


def test_linksInPlaceOfListedMessagesLeaveTheirTargetsAlone(tmp_path: Path) -> None:
    """
    Listed messages replaced by links to another user's files, one deleted
    and one retrieved: QUIT removes one link and renames the other, and
    the files they point to keep their names and contents.
    """
    alice, bob = twoUsers(tmp_path)
    bobBefore = contentsOf(bob / "cur")
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    try:
        maildrop.listMessages()
        for number in ALICE:
            name = messageName(number, ALICE[number])
            os.unlink(alice / "cur" / name)
            os.symlink(bob / "cur" / messageName(number, BOB[number]), alice / "cur" / name)
        maildrop.commit(frozenset({uidOf(0, ALICE)}), frozenset({uidOf(1, ALICE)}))
    finally:
        maildrop.release()
    assert contentsOf(bob / "cur") == bobBefore
    [left] = os.listdir(alice / "cur")
    assert left == messageName(1, ALICE[1], "S")
    assert os.readlink(alice / "cur" / left) == str(bob / "cur" / messageName(1, BOB[1]))


def test_linkInPlaceOfKnownMessageNotListedNextSession(tmp_path: Path) -> None:
    """
    A message replaced, between two sessions, by a link of the same name is
    not listed by the next session, though the process keeps the first
    session's listing of cur/.
    """
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:the-password-hash\n")
    alice, _ = twoUsers(tmp_path)
    assert len(listOnce(alice)) == 2
    name = messageName(0, ALICE[0])
    os.unlink(alice / "cur" / name)
    os.symlink(secret, alice / "cur" / name)
    assert [info.uid for info in listOnce(alice)] == [uidOf(1, ALICE)]


def test_fifosAndOtherNonFilesSkippedAndLoggedOnce(tmp_path: Path) -> None:
    """
    FIFOs, links and directories in cur/ and new/ are skipped by the
    listing, which completes at once; one warning event names them all.
    """
    alice, _ = twoUsers(tmp_path)
    fifos = [alice / "cur" / messageName(7, b"x"), alice / "new" / "1700000000.M1P1.fifo"]
    for fifo in fifos:
        os.mkfifo(fifo)
    os.symlink(tmp_path / "bob" / "cur" / messageName(2, BOB[2]), alice / "cur" / messageName(8, BOB[2]))
    (alice / "new" / "1700000001.M1P1.directory").mkdir()
    with capturedLogs() as events:
        snapshot = withinDeadline(lambda: listOnce(alice), fifos)
    assert sorted(info.uid for info in snapshot) == sorted(uidOf(n, ALICE) for n in ALICE)
    warnings = [event for event in events if event["log_level"] == LogLevel.warn]
    assert len(warnings) == 1, warnings
    [warning] = warnings
    assert warning["event"] == "not-a-file"
    assert sorted(warning["names"]) == sorted([
        "cur/" + fifos[0].name,
        "new/" + fifos[1].name,
        "cur/" + messageName(8, BOB[2]),
        "new/1700000001.M1P1.directory",
    ])
    for fifo in fifos:
        assert fifo.exists()


def test_fifoInPlaceOfListedMessageDoesNotBlock(tmp_path: Path) -> None:
    """
    RETR of a message replaced by a FIFO after the snapshot returns at once
    with MessageVanished, and the session goes on.
    """
    alice, _ = twoUsers(tmp_path)
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    fifo = alice / "cur" / messageName(0, ALICE[0])
    try:
        maildrop.listMessages()
        os.unlink(fifo)
        os.mkfifo(fifo)
        consumer, result = withinDeadline(lambda: sendResult(maildrop, uidOf(0, ALICE)), [fifo])
        assert result.check(MessageVanished)
        assert consumer.registrations == 0
        consumer, result = sendResult(maildrop, uidOf(1, ALICE))
        assert b"".join(consumer.writes) == ALICE[1]
    finally:
        maildrop.release()


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "socket"])
def test_nonFileInPlaceOfListedMessageIsNotReadWhole(tmp_path: Path, kind: str) -> None:
    """
    Reading a small message whole finds a FIFO (without blocking), a link
    to another user's message, a directory or a socket in its place: the
    message has vanished; the other messages are read whole as ever.
    """
    import socket as sockets

    alice, bob = twoUsers(tmp_path)
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    path = alice / "cur" / messageName(0, ALICE[0])
    try:
        maildrop.listMessages()
        os.unlink(path)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink":
            os.symlink(bob / "cur" / messageName(0, BOB[0]), path)
        elif kind == "directory":
            os.mkdir(path)
        else:
            listener = sockets.socket(sockets.AF_UNIX)
            listener.bind(str(path))
            listener.close()
        with pytest.raises(MessageVanished):
            withinDeadline(lambda: maildrop.readWhole(uidOf(0, ALICE), 65536), [path] if kind == "fifo" else [])
        assert maildrop.readWhole(uidOf(1, ALICE), 65536) == ALICE[1]
    finally:
        maildrop.release()


def test_readingWholeHasALimit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A message is read whole only if it holds at most the limit, counted
    as it is read: a file that grew past it since C{fstat} said its size
    is left to streaming too; a renamed message is looked for by streaming;
    after the release nothing is read.
    """
    from popsrv.store.maildir import directory

    alice, _ = twoUsers(tmp_path)
    maildrop = MaildirMaildrop(str(alice), "alice")
    maildrop.lock()
    try:
        maildrop.listMessages()
        uid, content = uidOf(1, ALICE), ALICE[1]
        assert maildrop.readWhole(uid, len(content)) == content
        assert maildrop.readWhole(uid, len(content) - 1) is None
        openRegular = directory.openRegular

        def understated(dirFd: int, name: str):
            fd, status = openRegular(dirFd, name)
            return fd, os.stat_result((*status[:6], 1, *status[7:]))  # st_size 1: it "grew"

        monkeypatch.setattr(directory, "openRegular", understated)
        assert maildrop.readWhole(uid, len(content)) == content
        assert maildrop.readWhole(uid, len(content) - 1) is None
        monkeypatch.undo()
        name = messageName(1, content)
        os.rename(alice / "cur" / name, alice / "cur" / (name + "F"))
        assert maildrop.readWhole(uid, len(content)) is None
        consumer, result = sendResult(maildrop, uid)
        assert b"".join(consumer.writes) == content
    finally:
        maildrop.release()
    with pytest.raises(MaildropError):
        maildrop.readWhole(uid, len(content))


def test_fifoInPlaceOfKnownMessageSkippedNextSession(tmp_path: Path) -> None:
    """
    A message replaced by a FIFO between two sessions (the process keeps
    the first session's listing) is not listed, and nothing blocks.
    """
    alice, _ = twoUsers(tmp_path)
    assert len(listOnce(alice)) == 2
    fifo = alice / "cur" / messageName(0, ALICE[0])
    os.unlink(fifo)
    os.mkfifo(fifo)

    def session() -> list[bytes]:
        maildrop = MaildirMaildrop(str(alice), "alice")
        maildrop.lock()
        try:
            sent = []
            for info in maildrop.listMessages():
                consumer, result = sendResult(maildrop, info.uid)
                assert result is None
                sent.append(b"".join(consumer.writes))
            return sent
        finally:
            maildrop.release()

    assert withinDeadline(session, [fifo]) == [ALICE[1]]


def test_fifoInNewNotMeasuredAndLeftAlone(tmp_path: Path) -> None:
    """
    A FIFO in new/ with a name like a delivery's is neither measured (which
    would block) nor moved to cur/.
    """
    alice, _ = twoUsers(tmp_path)
    delivered = deliver(str(alice), b"Subject: real\n\nbody\n")
    fifo = alice / "new" / "1700000000.M9P9.fifo"
    os.mkfifo(fifo)
    snapshot = withinDeadline(lambda: listOnce(alice), [fifo])
    assert delivered in {info.uid for info in snapshot}
    assert os.listdir(alice / "new") == [fifo.name]


def test_nameOfTheLongestLengthServedAndKeptIfItCannotGrow(tmp_path: Path) -> None:
    """
    A message whose name is as long as names go (255 octets) is listed
    under a hashed uid and served; marking it seen, which would lengthen
    its name, fails with a warning and leaves it as it was; DELE removes
    it.
    """
    alice, _ = twoUsers(tmp_path)
    content = b"long name\r\n"
    head, tail = "1700000000.M1P1.", f",S={len(content)},W={len(content)}:2,"
    name = head + "h" * (255 - len(head) - len(tail)) + tail
    writeMessage(alice / "cur", name, content)
    for delete in (False, True):
        maildrop = MaildirMaildrop(str(alice), "alice")
        maildrop.lock()
        try:
            [uid] = [info.uid for info in maildrop.listMessages() if info.size == len(content)]
            assert len(uid) == 40
            consumer, result = sendResult(maildrop, uid)
            assert result is None
            assert b"".join(consumer.writes) == content
            with capturedLogs() as events:
                maildrop.commit(frozenset({uid} if delete else ()), frozenset({uid}))
        finally:
            maildrop.release()
        if delete:
            assert name not in os.listdir(alice / "cur")
        else:
            assert name in os.listdir(alice / "cur")
            assert [event["uid"] for event in events if event["log_level"] == LogLevel.warn] == [uid]


@pytest.mark.parametrize("sizes", [",W=" + "9" * 19, ",S=5,W=" + "9" * 40, ",W=99999999999999999999,W=3"])
@pytest.mark.parametrize("count", [1, 300])
def test_sizeTooLongToBeTrueIsMeasured(tmp_path: Path, sizes: str, count: int) -> None:
    """
    A name whose recorded POP3 size has more digits than any true size
    (which no 64-bit count could hold) is measured and renamed with its
    true size, alone or among many usual names, and listed from then on.
    """
    alice, _ = twoUsers(tmp_path)
    content = b"sized\n"
    for number in range(count - 1):
        writeMessage(alice / "cur", f"1700000000.M{number}P1.h,S=7,W=7:2,", b"other\r\n")
    writeMessage(alice / "cur", f"1700000001.M1P2.h{sizes}:2,S", content)
    before = len(os.listdir(alice / "cur"))
    for _ in range(2):
        messages = listOnce(alice)
        assert len(messages) == before
        [message] = [info for info in messages if info.uid == "1700000001.M1P2.h"]
        assert message.size == len(content) + 1 and message.seen
    [renamed] = [name for name in curNames(alice) if name.startswith("1700000001")]
    assert renamed.endswith(",W=7:2,S") and renamed.count(",W=") == 1


# 3. Measuring off the reactor thread


def test_unsizedMessageMeasuredInThePool(
    tmp_path: Path, reactorThread: ReactorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A big (sparse) file in cur/ whose name records no size, in a small
    Maildir without new mail, is measured in the thread pool, never in the
    reactor's thread, and gets its sizes in its name.
    """
    from popsrv.store.maildir import intake

    alice, _ = twoUsers(tmp_path)
    big = alice / "cur" / "1500.M1P1.big:2,"
    with open(big, "wb") as f:
        f.truncate(64 * 2**20)
    threads = []
    measure = intake.measure

    def recordingMeasure(*args: object, **kwargs: object) -> tuple[int, int]:
        threads.append(threading.current_thread())
        return measure(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(intake, "measure", recordingMeasure)
    maildrop = MaildirMaildrop(str(alice), "alice", runner=threadRunner(reactorThread.reactor))

    def session() -> list[int]:
        maildrop.lock()
        try:
            return [info.size for info in reactorThread.call(maildrop.listMessages)]
        finally:
            maildrop.release()

    assert 64 * 2**20 + 2 in session()
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()
    assert threads[0].name != "reactor"
    assert "1500.M1P1.big,S=67108864,W=67108866:2," in curNames(alice)


def lockedWithRecordingRunner(tmp_path: Path) -> tuple[Path, MaildirMaildrop, list[str]]:
    """
    Alice's Maildir of L{twoUsers}, her maildrop, locked, and the names of
    the functions its runner ran: it runs each at once, and returns its
    result as a fired Deferred.
    """
    alice, _ = twoUsers(tmp_path)
    calls: list[str] = []

    def runner(function: Callable[..., _T], *args: object) -> Deferred[_T]:
        calls.append(function.__name__)
        return succeed(function(*args))

    maildrop = MaildirMaildrop(str(alice), "alice", runner=runner)
    maildrop.lock()
    return alice, maildrop, calls


def test_retrOfRenamedMessageLocatesItThroughTheRunner(tmp_path: Path) -> None:
    """
    RETR of a message whose name changed since the snapshot looks for its
    new name (a listing of cur/, of any size) through the runner.
    """
    alice, maildrop, calls = lockedWithRecordingRunner(tmp_path)
    try:
        maildrop.listMessages()
        assert calls == []
        name = messageName(0, ALICE[0])
        os.rename(alice / "cur" / name, alice / "cur" / (name + "F"))
        consumer, result = sendResult(maildrop, uidOf(0, ALICE))
        assert result is None
        assert b"".join(consumer.writes) == ALICE[0]
        assert calls == ["_openRenamed"]
    finally:
        maildrop.release()


def test_quickCommitNeedingAListingGoesThroughTheRunner(tmp_path: Path) -> None:
    """
    A commit of a few messages is done at once only while every message is
    where the snapshot saw it; one renamed since (looking for it lists
    cur/, of any size) sends the commit through the runner.
    """
    alice, maildrop, calls = lockedWithRecordingRunner(tmp_path)
    try:
        maildrop.listMessages()
        name = messageName(0, ALICE[0])
        os.rename(alice / "cur" / name, alice / "cur" / (name + "F"))
        maildrop.commit(frozenset({uidOf(1, ALICE)}), frozenset({uidOf(0, ALICE)}))
        assert calls == ["_apply"]
    finally:
        maildrop.release()
    assert curNames(alice) == [name + "FS"]


# 4. Descriptors


def test_descriptorsDoNotLeak(tmp_path: Path) -> None:
    """
    Many sessions (listing, sending, committing), refused locks and
    refused Maildirs leave the process with as many descriptors open as
    before.
    """
    alice, bob = twoUsers(tmp_path)
    os.symlink(bob / "cur", tmp_path / "linked")
    (tmp_path / "broken").mkdir()
    os.symlink(bob / "cur", tmp_path / "broken" / "cur")
    fifo = alice / "cur" / messageName(9, b"fifo")
    os.mkfifo(fifo)
    baseline = openDescriptors()
    for n in range(50):
        deliver(str(alice), b"Subject: %d\n\nbody\n" % n)
        maildrop = MaildirMaildrop(str(alice), "alice")
        maildrop.lock()
        with pytest.raises(MaildropUnusable):
            MaildirMaildrop(str(tmp_path / "broken"), "broken").lock()
        other = MaildirMaildrop(str(alice), "alice")
        with pytest.raises(MaildropLocked):
            other.lock()
        snapshot = maildrop.listMessages()
        for info in list(snapshot)[:3]:
            sendResult(maildrop, info.uid)
        consumer, result = sendResult(maildrop, "no such uid")
        assert result.check(MessageVanished)
        maildrop.commit(frozenset([snapshot[-1].uid]), frozenset([snapshot[0].uid]))
        maildrop.release()
        maildrop.release()
    assert openDescriptors() == baseline


def test_releaseDuringWorkClosesWhenTheWorkIsDone(tmp_path: Path) -> None:
    """
    Descriptors used by work still running (a listing in a thread, say) are
    closed, and the lock freed, only when that work is done, never under
    it; work begun after the release is refused.
    """
    from popsrv.store.maildir.directory import OpenedMaildir

    alice, _ = twoUsers(tmp_path)
    baseline = openDescriptors()
    opened = OpenedMaildir.open(str(alice), "alice")
    with opened.using():
        opened.close()
        assert len(opened.cur.listFiles()[0]) == 2
        with pytest.raises(MaildropLocked):
            OpenedMaildir.open(str(alice), "alice")
    assert openDescriptors() == baseline
    with pytest.raises(MaildropError, match="released"):
        with opened.using():
            pass
    opened.close()
    OpenedMaildir.open(str(alice), "alice").close()
    assert openDescriptors() == baseline


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_lockFileThatIsNotAFileRefused(tmp_path: Path, kind: str) -> None:
    """
    A lock file that is not a regular file makes the Maildir unusable; the
    lock() returns at once and leaves nothing open.
    """
    alice, _ = twoUsers(tmp_path)
    lockFile = alice / LOCK_FILE
    if kind == "fifo":
        os.mkfifo(lockFile)
    elif kind == "symlink":
        os.symlink(tmp_path / "elsewhere", lockFile)
    else:
        lockFile.mkdir()
    baseline = openDescriptors()
    with pytest.raises(MaildropUnusable):
        withinDeadline(lambda: MaildirMaildrop(str(alice), "alice").lock(), [lockFile])
    assert openDescriptors() == baseline
    assert not (tmp_path / "elsewhere").exists()


# 5. End to end


def startWorkers(process: TwistdProcess, workers: int) -> None:
    """Wait until each worker of a --workers server serves."""
    for index in range(workers if workers > 1 else 0):
        process.waitFor(rf"worker {index}\] worker ready", timeout=30)


@pytest.mark.parametrize("workers", [1, 2])
def test_fifoInOneMaildirBlocksNoSession(launcher: Launcher, workers: int) -> None:
    """
    With FIFOs in alice's new/ and cur/, and one in place of a message she
    is about to retrieve, the real server answers her RETR with -ERR, serves
    her other message, and greets and serves bob meanwhile (in one process,
    and with two workers).
    """
    server = launcher.popsrv("--workers", str(workers))
    startWorkers(server.twistd, workers)
    alice, bob = Path(server.maildir("alice")), Path(server.maildir("bob"))
    firstUid = deliver(str(alice), b"Subject: first\r\n\r\nfirst\r\n")
    deliver(str(alice), b"Subject: second\r\n\r\nsecond\r\n")
    deliver(str(bob), b"Subject: bob\r\n\r\nfor bob\r\n")
    fifos = [alice / "new" / "1700000000.M1P1.fifo", alice / "cur" / "1700000001.M1P1.fifo,S=5,W=5:2,"]
    for fifo in fifos:
        os.mkfifo(fifo)
    client = poplib.POP3(server.host, server.port, timeout=CLIENT_TIMEOUT)
    try:
        client.user("alice")
        client.pass_("secret")
        assert client.stat()[0] == 2
        [first] = [name for name in os.listdir(alice / "cur") if name.startswith(firstUid + ",")]
        os.unlink(alice / "cur" / first)
        fifos.append(alice / "cur" / first)
        os.mkfifo(fifos[-1])
        started = time.monotonic()
        with pytest.raises(poplib.error_proto, match="removed"):
            client.retr(1)
        assert time.monotonic() - started < CLIENT_TIMEOUT
        other = poplib.POP3(server.host, server.port, timeout=CLIENT_TIMEOUT)
        try:
            assert other.getwelcome().startswith(b"+OK")
            other.user("bob")
            other.pass_("hunter2")
            assert other.retr(1)[1] == [b"Subject: bob", b"", b"for bob"]
            other.quit()
        finally:
            other.close()
        assert client.retr(2)[1] == [b"Subject: second", b"", b"second"]
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()
        for fifo in fifos:
            unblockReaders(fifo)


def test_filesThatCannotBeTakenDoNotBlockTheRest(tmp_path: Path) -> None:
    """
    A message in new/ whose name leaves no room for its sizes, and one in
    cur/ without sizes whose name is as long, are left where they are and
    named in one warning at each session; the other messages are served.
    """
    alice, _ = twoUsers(tmp_path)
    longNew = "1700000000.M1P1." + "h" * 235
    longCur = "1700000001.M1P1." + "k" * 236 + ":2,"
    (alice / "new" / longNew).write_bytes(b"Subject: long\n\nbody\n")
    (alice / "cur" / longCur).write_bytes(b"Subject: long\n\nbody\n")
    for _ in range(2):
        with capturedLogs() as events:
            snapshot = listOnce(alice)
        assert sorted(info.uid for info in snapshot) == sorted(uidOf(n, ALICE) for n in ALICE)
        [warning] = [event for event in events if event.get("event") == "unusable-file"]
        assert sorted(warning["names"]) == sorted([
            f"new/{longNew} (File name too long)", f"cur/{longCur} (File name too long)",
        ])
    assert (alice / "new" / longNew).exists() and (alice / "cur" / longCur).exists()


def test_linkedDirectoryOnTheWayToAMaildir(tmp_path: Path) -> None:
    """
    With a template such as root/%n/Mail/Maildir, bob (who owns root/bob)
    makes his Mail a link to alice's: his login is refused, and alice's
    mail is neither listed for him nor moved; the template's fixed base may
    itself be a link (the operator's).
    """
    from popsrv.store.realm import MaildirRealm

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "root").symlink_to(real)
    realm = MaildirRealm(template=str(tmp_path / "root" / "%n" / "Mail" / "Maildir"))
    alice = realm.maildropFor("alice")
    deliver(alice.path, b"Subject: for alice\r\n\r\nsecret\r\n")
    assert [info.size for info in listOnce(Path(alice.path))] == [30]
    (real / "bob").mkdir()
    (real / "bob" / "Mail").symlink_to(real / "alice" / "Mail")
    bob = realm.maildropFor("bob")
    with pytest.raises(MaildropUnusable, match="Mail is not a directory"):
        bob.lock()
    assert len(os.listdir(real / "alice" / "Mail" / "Maildir" / "cur")) == 1
    os.unlink(real / "bob" / "Mail")
    bob = realm.maildropFor("bob")
    bob.lock()
    assert list(bob.listMessages()) == []
    bob.release()
    assert (real / "bob" / "Mail" / "Maildir" / "cur").is_dir()


@pytest.mark.parametrize("workers", [1, 2])
def test_linkedDirectoryOnTheWayEndToEnd(launcher: Launcher, tmp_path: Path, workers: int) -> None:
    """
    The real server, --maildir ROOT/%n/Mail/Maildir: bob's link to alice's
    Mail gets [SYS/PERM] and nothing of alice's; alice is served.
    """
    root = tmp_path / "mail"
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:secret\nbob:hunter2\n")
    process = launcher.twistd(
        ["--listen", "tcp:0:interface=127.0.0.1", "--maildir", str(root / "%n" / "Mail" / "Maildir"),
         "--auth", f"file:{passwd}", "--workers", str(workers)], tmp_path,
    )
    port = process.waitListening()
    startWorkers(process, workers)
    deliver(str(root / "alice" / "Mail" / "Maildir"), b"Subject: for alice\r\n\r\nsecret\r\n")
    (root / "bob").mkdir()
    (root / "bob" / "Mail").symlink_to(root / "alice" / "Mail")
    client = poplib.POP3("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        client.user("bob")
        with pytest.raises(poplib.error_proto, match=r"SYS/PERM"):
            client.pass_("hunter2")
    finally:
        client.close()
    client = poplib.POP3("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        client.user("alice")
        client.pass_("secret")
        assert client.retr(1)[1] == [b"Subject: for alice", b"", b"secret"]
        client.quit()
    finally:
        client.close()
