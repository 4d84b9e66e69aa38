"""
Tests of taking mail into C{cur/} (L{popsrv.store.maildir.intake}, and the
helper process of L{popsrv.store.maildir.newmail}): the sizes recorded are
the sizes RETR sends, whatever the content; a crash at any step, or a
helper killed at any point, loses and duplicates nothing; hostile names and
entries are left alone; a helper that fails changes nothing but the time it
takes.
"""

from __future__ import annotations

import collections
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List

import pytest
from twisted.logger import LogLevel, capturedLogs

from popsrv.errors import MaildropLocked
from popsrv.store.maildir import MaildirMaildrop, intake, newmail
from popsrv.store.maildir import maildrop as maildropModule
from popsrv.store.maildir.directory import Directory, OpenedMaildir
from popsrv.store.maildir.listing import ListingCache
from popsrv.wire.framing import normalizedSize

DEADLINE = 30.0
CHUNK = intake.MEASURE_CHUNK


class Crash(BaseException):
    """
    The process dies here (nothing catches it, as nothing survives a kill).
    """


# Contents: line ends of every kind, a CR and its LF on both sides of a
# read's end, no final line end, nothing at all, octets that are not text.
CONTENTS = [
    b"",
    b"x",
    b"\n",
    b"\r\n",
    b"\r",
    b"Subject: lf\n\nbody\n",
    b"Subject: crlf\r\n\r\nbody\r\n",
    b"Subject: mixed\r\n\nlone\rcr\r\n.dot\nno final line end",
    b"\x00\xff\r\r\n\n\x00",
    b"a" * (CHUNK - 1) + b"\r\n" + b"b\n",
    b"a" * (CHUNK - 1) + b"\n\n",
    b"a" * CHUNK + b"\r",
    b"line\n" * (2 * CHUNK // 5 + 3),
]


def directories(maildir: Path) -> tuple[Directory, Directory]:
    """
    A Maildir's C{new/} and C{cur/}, opened as a session opens them.
    """
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    return tuple(  # type: ignore[return-value]
        Directory(os.open(maildir / sub, intake.OPEN_DIRECTORY), sub) for sub in ("new", "cur")
    )


def closeAll(*opened: Directory) -> None:
    for directory in opened:
        directory.close()


def sizesOf(name: str) -> tuple[int, int]:
    """
    The C{,S=} and C{,W=} of a name (both must be there).
    """
    physical = re.search(r",S=(\d+)", name)
    virtual = re.search(r",W=(\d+)", name)
    assert physical is not None and virtual is not None, name
    return int(physical.group(1)), int(virtual.group(1))


def fill(maildir: Path, count: int, foreign: bool = True) -> Dict[str, bytes]:
    """
    Put C{count} messages in C{new/} (names as Dovecot's LDA, Postfix and
    Dovecot's LDA with both sizes write them) and two in C{cur/} without a
    POP3 size (unless not C{foreign}); return the contents by unique first
    line.
    """
    directories(maildir)
    stored = {}
    for number in range(count):
        content = b"X-Id: %d\n" % number + CONTENTS[number % 9]
        stored[f"{number}"] = content
        style = number % 3
        if style == 0:
            name = f"{1_700_000_000 + number}.M{number}P1.lda,S={len(content)}"
        elif style == 1:
            name = f"{1_700_000_000 + number}.V801I{number:x}M1.postfix"
        else:
            name = f"{1_700_000_000 + number}.M{number}P1.both,S={len(content)},W={normalizedSize([content])}"
        (maildir / "new" / name).write_bytes(content)
    for number in range(count, count + 2 if foreign else count):
        content = b"X-Id: %d\n" % number + CONTENTS[number % 9]
        stored[f"{number}"] = content
        (maildir / "cur" / f"{1_600_000_000 + number}.M1P1.courier,S={len(content)}:2,S").write_bytes(content)
    return stored


def checkTaken(maildir: Path, stored: Dict[str, bytes]) -> None:
    """
    Every message is in C{cur/} exactly once, under a name whose sizes are
    its own, and nothing is left in C{new/}.
    """
    assert os.listdir(maildir / "new") == []
    found: Dict[str, List[bytes]] = collections.defaultdict(list)
    for name in os.listdir(maildir / "cur"):
        content = (maildir / "cur" / name).read_bytes()
        assert sizesOf(name) == (len(content), normalizedSize([content])), name
        found[content.split(b"\n", 1)[0].split(b" ")[1].decode()].append(content)
    assert found == {key: [content] for key, content in stored.items()}


# Measuring


@pytest.mark.parametrize("content", CONTENTS, ids=range(len(CONTENTS)))
def test_theMeasuredSizeIsTheSizeRetrSends(tmp_path: Path, content: bytes) -> None:
    """
    A message's POP3 size is measured as the framing counts it, and its
    file size as stored, whatever its line ends and wherever they fall
    against the ends of the reads.
    """
    new, cur = directories(tmp_path)
    try:
        (tmp_path / "new" / "m").write_bytes(content)
        assert intake.measure(new.fileno(), "m", normalizedSize) == (len(content), normalizedSize([content]))
    finally:
        closeAll(new, cur)


@pytest.mark.parametrize("reported", [0, 1, CHUNK - 1, CHUNK + 7, 10 * CHUNK])
def test_aSizeThatChangedSinceFstatIsReadToTheEnd(tmp_path: Path, monkeypatch, reported: int) -> None:
    """
    However the file's size as C{fstat} gave it differs from what there is
    to read (the file grew or shrank), the whole file is read, once.
    """
    content = b"line\r\n" * (CHUNK // 3) + b"end\n"
    new, cur = directories(tmp_path)
    realFstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        status = list(realFstat(fd))
        status[6] = reported
        return os.stat_result(status)

    monkeypatch.setattr(intake, "os", SimpleNamespace(**{**vars(os), "fstat": fstat}))
    try:
        (tmp_path / "new" / "m").write_bytes(content)
        assert intake.measure(new.fileno(), "m", normalizedSize) == (len(content), normalizedSize([content]))
    finally:
        closeAll(new, cur)


def test_mostMessagesAreOneRead(tmp_path: Path, monkeypatch) -> None:
    """
    A message smaller than a read is read with one C{read} (one octet more
    than its size is asked for, and the short read is its end).
    """
    new, cur = directories(tmp_path)
    reads: List[int] = []
    realRead = os.read

    def read(fd: int, size: int) -> bytes:
        reads.append(size)
        return realRead(fd, size)

    monkeypatch.setattr(intake, "os", SimpleNamespace(**{**vars(os), "read": read}))
    try:
        (tmp_path / "new" / "m").write_bytes(b"x" * 5000)
        intake.measure(new.fileno(), "m", normalizedSize)
        assert reads == [5001]
    finally:
        closeAll(new, cur)


# Crashes


def crashingOs(at: int, calls: List[str]) -> SimpleNamespace:
    """
    The C{os} module, but for its file system calls: the C{at}-th of those
    raises L{Crash}; each call is recorded in C{calls}.
    """
    patched = dict(vars(os))
    for name in ("open", "read", "fstat", "close", "rename", "scandir", "unlink", "link", "write"):
        real = getattr(os, name)

        def call(*args: object, real: Callable[..., object] = real, name: str = name, **kwargs: object) -> object:
            calls.append(name)
            if len(calls) == at:
                raise Crash(name)
            return real(*args, **kwargs)

        patched[name] = call
    return SimpleNamespace(**patched)


def session(maildir: Path) -> list:
    """
    One session's snapshot of the Maildir, as a fresh process makes it.
    """
    maildrop = MaildirMaildrop(str(maildir), "alice")
    maildrop.lock()
    try:
        return list(maildrop.listMessages())
    finally:
        maildrop.release()


def test_aCrashAtAnyStepLosesAndDuplicatesNothing(tmp_path: Path, monkeypatch) -> None:
    """
    The process dies at each file system call of taking new mail in turn
    (and of measuring names of cur/ without a POP3 size); the next session
    finds every message once, with its right sizes, and lists each with
    the size RETR sends.
    """
    monkeypatch.setattr(maildropModule, "LISTINGS", ListingCache())
    points = 0
    while True:
        points += 1
        maildir = tmp_path / f"crash{points}"
        stored = fill(maildir, 9)
        calls: List[str] = []
        monkeypatch.setattr(intake, "os", crashingOs(points, calls))
        try:
            session(maildir)
            crashed = False
        except Crash:
            crashed = True
        monkeypatch.setattr(intake, "os", os)
        snapshot = session(maildir)
        checkTaken(maildir, stored)
        assert sorted(info.size for info in snapshot) == sorted(normalizedSize([c]) for c in stored.values())
        if not crashed:
            break
    # Every step was a point of crash: listing, and for each message
    # opening, fstat, reading, closing and renaming.
    assert points > 9 * 4
    assert {"rename", "read", "open", "fstat", "close"} <= set(calls)


# The helper process


def hostile(maildir: Path) -> Dict[str, str]:
    """
    Put entries in C{new/} that are not to be taken or not to be taken as
    they are: a name with a line end, a name that is not UTF-8, a name too
    long for its sizes, a FIFO, a symbolic link, a directory and a dot
    file; return what each is (by name, as the file system gives it).
    """
    new = maildir / "new"
    entries = {
        "1700000000.M1P1.line\nend": "file",
        os.fsdecode(b"1700000000.M2P1.\xff\xfe"): "file",
        "1700000000.M3P1." + "l" * 239: "too long",
        "1700000000.M4P1.fifo": "fifo",
        "1700000000.M5P1.link": "link",
        "1700000000.M6P1.dir": "dir",
        ".dotfile": "dot",
    }
    for name, kind in entries.items():
        path = os.path.join(os.fsencode(new), os.fsencode(name))
        if kind in ("file", "too long", "dot"):
            with open(path, "wb") as f:
                f.write(b"X-Id: " + os.fsencode(name)[-8:].hex().encode() + b"\r\nbody\n")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "link":
            os.symlink("/etc/passwd", path)
        else:
            os.mkdir(path)
    return entries


def test_theHelperTakesWhatTheServerWouldTake(tmp_path: Path) -> None:
    """
    The helper process takes every regular file of C{new/} with its sizes,
    names with a line end or bytes that are not UTF-8 included; it leaves
    a file whose name cannot grow, FIFOs, links, directories and dot files
    where they are, as the server itself would, which then names them.
    """
    stored = fill(tmp_path, 30, foreign=False)
    entries = hostile(tmp_path)
    new, cur = directories(tmp_path)
    try:
        assert newmail.takeInHelper(new, cur) is None
        left = sorted(os.listdir(tmp_path / "new"))
        assert left == sorted(name for name, kind in entries.items() if kind != "file")
        others, unusable, problem = newmail.deliverNew(new, cur, newmail.GILPacer())
    finally:
        closeAll(new, cur)
    assert sorted(others) == sorted(name for name, kind in entries.items() if kind in ("fifo", "link", "dir"))
    assert unusable == [("1700000000.M3P1." + "l" * 239, os.strerror(errno.ENAMETOOLONG))]
    assert problem is None
    taken = {name.partition(",")[0] for name in os.listdir(tmp_path / "cur")}
    assert {name for name, kind in entries.items() if kind == "file"} <= taken
    for name in os.listdir(tmp_path / "cur"):
        content = (tmp_path / "cur" / name).read_bytes()
        assert sizesOf(name) == (len(content), normalizedSize([content]))
    assert len(taken) == len(stored) + 2


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_aHelperKilledMidwayLosesAndDuplicatesNothing(tmp_path: Path, fraction: float) -> None:
    """
    A helper killed (SIGKILL) when a part of C{new/} is taken leaves every
    message in one place with its right sizes; the server takes the rest.
    """
    count = 3000
    stored = fill(tmp_path, count, foreign=False)
    new, cur = directories(tmp_path)
    try:
        helper = subprocess.Popen(
            newmail.helperCommand(new, cur), pass_fds=(new.fileno(), cur.fileno()), stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + DEADLINE
        while len(os.listdir(tmp_path / "new")) > count * (1 - fraction) and helper.poll() is None:
            assert time.monotonic() < deadline
        helper.send_signal(signal.SIGKILL)
        assert helper.wait(DEADLINE) in (-signal.SIGKILL, 0)
        assert helper.stderr is not None and helper.stderr.read() == b""
        helper.stderr.close()
        newmail.deliverNew(new, cur, newmail.GILPacer())
    finally:
        closeAll(new, cur)
    checkTaken(tmp_path, stored)


def test_aHelperStopsOnceItsServerIsGone(tmp_path: Path) -> None:
    """
    A helper whose server process is gone (its parent is not the process
    it was started for) stops after at most one step of names.
    """
    count = 3 * intake.LIST_STEP
    fill(tmp_path, count)
    new, cur = directories(tmp_path)
    try:
        command = newmail.helperCommand(new, cur)
        command[-1] = str(os.getpid() + 1_000_000)
        done = subprocess.run(command, pass_fds=(new.fileno(), cur.fileno()), capture_output=True, timeout=DEADLINE)
    finally:
        closeAll(new, cur)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert len(os.listdir(tmp_path / "new")) >= count - intake.LIST_STEP - 1


def test_aHelperThatCannotStartChangesNothingButTheTime(tmp_path: Path, monkeypatch) -> None:
    """
    If the helper cannot start (or fails), the session takes the new mail
    itself and logs why, once, with a stable event name.
    """
    monkeypatch.setattr(newmail, "HELPER_MINIMUM", 5)
    monkeypatch.setattr(newmail.sys, "executable", str(tmp_path / "no-python"))
    stored = fill(tmp_path / "alice", 12)
    maildrop = MaildirMaildrop(str(tmp_path / "alice"), "alice", runner=lambda function, *args: function(*args))
    maildrop.lock()
    try:
        with capturedLogs() as events:
            messages = maildrop.listMessages()
    finally:
        maildrop.release()
    assert len(messages) == len(stored)  # type: ignore[arg-type]
    checkTaken(tmp_path / "alice", stored)
    failures = [event for event in events if event.get("event") == "intake-helper-failed"]
    assert len(failures) == 1 and failures[0]["log_level"] == LogLevel.warn
    assert failures[0]["why"].startswith("cannot start ")
    assert "Traceback" not in failures[0]["why"]


def test_aHelperThatFailsSaysWhyInOneLine(tmp_path: Path) -> None:
    """
    A helper that fails (here, given a descriptor that is not a directory)
    exits with a one-line reason, which the server reports.
    """
    new, cur = directories(tmp_path)
    try:
        bogus = Directory(os.open(os.devnull, os.O_RDONLY), "new")
        try:
            problem = newmail.takeInHelper(bogus, cur)
        finally:
            bogus.close()
    finally:
        closeAll(new, cur)
    assert problem is not None and problem.startswith("NotADirectoryError: ")
    assert "\n" not in problem


def test_aSessionUsesAHelperForABigNew(tmp_path: Path, monkeypatch) -> None:
    """
    A session in a thread of its own takes a C{new/} of L{HELPER_MINIMUM}
    entries or more in a helper process, and a smaller one itself.
    """
    spawned: List[int] = []
    takeInHelper = newmail.takeInHelper

    def recording(new: Directory, cur: Directory):
        spawned.append(len(os.listdir(tmp_path / "alice" / "new")))
        return takeInHelper(new, cur)

    monkeypatch.setattr(newmail, "takeInHelper", recording)
    monkeypatch.setattr(newmail, "HELPER_MINIMUM", 20)
    threaded = lambda function, *args: function(*args)  # noqa: E731
    for count in (19, 20):
        stored = fill(tmp_path / "alice", count)
        maildrop = MaildirMaildrop(str(tmp_path / "alice"), "alice", runner=threaded)
        maildrop.lock()
        try:
            assert len(maildrop.listMessages()) == len(stored)  # type: ignore[arg-type]
        finally:
            maildrop.release()
        checkTaken(tmp_path / "alice", stored)
        for name in os.listdir(tmp_path / "alice" / "cur"):
            os.unlink(tmp_path / "alice" / "cur" / name)
    assert spawned == [20]


def test_aLockCopiedIntoAnotherProcessEndsWithTheSession(tmp_path: Path) -> None:
    """
    A process started while a session holds its lock (as a helper is, by
    another session's thread) holds a copy of the lock's descriptor until
    it runs its program, or for ever if it keeps it: the session's end
    unlocks the Maildir all the same.
    """
    first = OpenedMaildir.open(str(tmp_path / "alice"), "alice")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, pass_fds=(first._lock,)
    )
    try:
        first.close()
        second = OpenedMaildir.open(str(tmp_path / "alice"), "alice")
        with pytest.raises(MaildropLocked):
            OpenedMaildir.open(str(tmp_path / "alice"), "alice")
        second.close()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(DEADLINE)
