"""
Tests of how the mbox store locks spools against delivery agents
(L{popsrv.store.mbox.locking}), with real programs holding the locks:
procmail's C{lockfile} for the dotlock, another process for the C{fcntl}
lock; stale dotlocks; a directory popsrv may not write; the bounded wait.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, List, TypeVar

import pytest
from twisted.logger import capturedLogs

from popsrv.errors import MaildropError
from popsrv.store.mbox import MboxMaildrop, deliver
from popsrv.store.mbox.locking import STALE_AGE, SpoolLocks
from popsrv.store.mbox.spool import OpenedSpool
from tests.store.test_maildir import killAndWait, readLine, spawn  # noqa: F401

_T = TypeVar("_T")
NOBODY = 65534
DEADLINE = 10.0

FCNTL_HOLDER = """
import fcntl, sys
fd = open(sys.argv[1], "r+b")
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def lockfileProgram() -> str:
    """
    procmail's lockfile(1), which makes dotlocks as procmail does.
    """
    path = shutil.which("lockfile")
    if path is None:
        pytest.fail("procmail's lockfile is not installed (apt-get install procmail)")
    return path


def makeSpool(directory: Path) -> Path:
    spool = directory / "alice"
    deliver(str(spool), b"Subject: one\n\nbody\n")
    return spool


def maildropOf(spool: Path, state: Path, wait: float = 5.0) -> MboxMaildrop:
    return MboxMaildrop(str(spool), "alice", str(state), lockWait=wait)


def logIn(maildrop: MboxMaildrop) -> int:
    """
    Lock and list; return how many messages; release.
    """
    maildrop.lock()
    try:
        return len(maildrop.listMessages())  # type: ignore[arg-type]
    finally:
        maildrop.release()


def _attempt(function: Callable[[], _T]) -> tuple:
    try:
        return True, function()
    except BaseException as error:
        return False, error


def lockSpool(spool: Path, sleep: Callable[[float], None], wait: float = 5.0) -> SpoolLocks:
    """
    Take the locks of a spool with C{sleep} as the pause between tries;
    return them (taken).
    """
    locks = SpoolLocks(OpenedSpool.open(str(spool), None), wait=wait, sleep=sleep)
    assert locks.acquire() is not None
    return locks


def test_aDotlockHeldByLockfileIsWaitedFor(tmp_path: Path) -> None:
    """
    While procmail's lockfile holds the dotlock, taking the locks waits
    (pauses, tries again); once the dotlock is gone, they are taken.
    """
    spool = makeSpool(tmp_path)
    subprocess.run([lockfileProgram(), "-r0", f"{spool}.lock"], check=True)
    pauses: List[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            os.unlink(f"{spool}.lock")

    locks = lockSpool(spool, pause)
    assert pauses == [0.01, 0.02, 0.04]
    assert b"popsrv" in Path(f"{spool}.lock").read_bytes()
    locks.release()
    assert not os.path.exists(f"{spool}.lock")


def test_anFcntlLockHeldByAnotherProcessIsWaitedFor(tmp_path: Path, spawn) -> None:  # noqa: F811
    """
    While another process holds the fcntl lock, taking the locks waits,
    without holding the dotlock meanwhile; once that process is gone, they
    are taken.
    """
    spool = makeSpool(tmp_path)
    holder = spawn(FCNTL_HOLDER, str(spool))
    assert readLine(holder) == b"locked\n"
    pauses: List[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        assert not os.path.exists(f"{spool}.lock"), "the dotlock is held while waiting"
        killAndWait(holder)

    locks = lockSpool(spool, pause)
    assert len(pauses) == 1
    locks.release()


def test_procmailWaitsForPopsrvsLocks(tmp_path: Path) -> None:
    """
    The real procmail, delivering while popsrv holds the spool's locks,
    waits for them, and delivers once they are given up.
    """
    procmail = shutil.which("procmail")
    if procmail is None:
        pytest.fail("procmail is not installed (apt-get install procmail)")
    spool = makeSpool(tmp_path)
    before = spool.read_bytes()
    rc = tmp_path / "procmailrc"
    rc.write_text(f"LOCKSLEEP=1\nDEFAULT={spool}\n")
    locks = lockSpool(spool, time.sleep)
    process = subprocess.Popen([procmail, "-f", "late@example.org", "-m", str(rc)], stdin=subprocess.PIPE)
    try:
        assert process.stdin is not None
        process.stdin.write(b"Subject: late\n\nwaited\n")
        process.stdin.close()
        deadline = time.monotonic() + DEADLINE
        while "nanosleep" not in Path(f"/proc/{process.pid}/wchan").read_text():
            assert process.poll() is None, "procmail did not wait"
            assert time.monotonic() < deadline, "procmail never waited"
            time.sleep(0.01)
        assert spool.read_bytes() == before
    finally:
        locks.release()
    assert process.wait(DEADLINE) == 0
    assert spool.read_bytes().startswith(before) and spool.read_bytes().endswith(b"Subject: late\n\nwaited\n\n")


def test_theWaitIsBounded(tmp_path: Path) -> None:
    """A lock held for longer than the wait fails the login (MaildropError, [SYS/TEMP]), logged mbox-lock-timeout."""
    spool = makeSpool(tmp_path)
    subprocess.run([lockfileProgram(), "-r0", f"{spool}.lock"], check=True)
    maildrop = maildropOf(spool, tmp_path / "state", wait=0.5)
    maildrop.lock()
    started = time.monotonic()
    with capturedLogs() as events:
        with pytest.raises(MaildropError, match="locked by another program"):
            maildrop.listMessages()
    assert 0.5 <= time.monotonic() - started < 5
    maildrop.release()
    timeouts = [event for event in events if event.get("event") == "mbox-lock-timeout"]
    assert [(event["path"], event["lock"]) for event in timeouts] == [(str(spool), "dotlock")]
    assert os.path.exists(f"{spool}.lock"), "a lock that is not stale is never removed"


def test_onlySoManyThreadsWait(tmp_path: Path) -> None:
    """
    Taking busy locks waits only if fewer than MAX_WAITING other threads
    wait already; else it fails at once (MaildropError, [SYS/TEMP]), noted
    as mbox-lock-busy.  A wait that ends, taken or timed out, lets another
    one begin.
    """
    spool = makeSpool(tmp_path)
    os.mkdir(f"{spool}.lock")
    slots = threading.BoundedSemaphore(1)

    def never(seconds: float) -> None:
        pytest.fail("waited without a free slot")

    assert slots.acquire(blocking=False)
    locks = SpoolLocks(OpenedSpool.open(str(spool), None), sleep=never, waiting=slots)
    with pytest.raises(MaildropError, match="locked by another program"):
        locks.acquire()
    assert [(note[2]["event"], note[2]["lock"]) for note in locks.notes] == [("mbox-lock-busy", "dotlock")]
    slots.release()
    # With the slot free, a wait begins, and the slot is given back when it
    # ends (timed out, then taken).
    clock = [0.0]

    def tick(seconds: float) -> None:
        assert not slots.acquire(blocking=False), "the waiting thread does not hold the slot"
        clock[0] += seconds

    locks = SpoolLocks(OpenedSpool.open(str(spool), None), wait=1.0, clock=lambda: clock[0], sleep=tick,
                       waiting=slots)
    with pytest.raises(MaildropError):
        locks.acquire()
    assert [note[2]["event"] for note in locks.notes] == ["mbox-lock-timeout"]
    assert slots.acquire(blocking=False)
    slots.release()

    def removeLock(seconds: float) -> None:
        tick(seconds)
        os.rmdir(f"{spool}.lock")

    locks = SpoolLocks(OpenedSpool.open(str(spool), None), clock=lambda: clock[0], sleep=removeLock, waiting=slots)
    assert locks.acquire() is not None
    locks.release()
    assert slots.acquire(blocking=False)


def test_locksAreFreeDuringTheSession(tmp_path: Path) -> None:
    """
    After login, the spool's locks are given up: procmail's lockfile and an
    fcntl lock can be taken while the session goes on.
    """
    spool = makeSpool(tmp_path)
    maildrop = maildropOf(spool, tmp_path / "state")
    maildrop.lock()
    maildrop.listMessages()
    try:
        subprocess.run([lockfileProgram(), "-r0", f"{spool}.lock"], check=True)
        os.unlink(f"{spool}.lock")
        with open(spool, "r+b") as stream:
            fcntl.lockf(stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        maildrop.release()


def test_aStaleDotlockIsRemoved(tmp_path: Path) -> None:
    """A dotlock older than five minutes is removed (event mbox-stale-dotlock); the login goes on."""
    spool = makeSpool(tmp_path)
    lock = tmp_path / "alice.lock"
    lock.write_bytes(b"12345\n")
    old = time.time() - STALE_AGE - 60
    os.utime(lock, (old, old))
    with capturedLogs() as events:
        assert logIn(maildropOf(spool, tmp_path / "state")) == 1
    assert not lock.exists()
    stale = [event for event in events if event.get("event") == "mbox-stale-dotlock"]
    assert len(stale) == 1 and stale[0]["path"] == str(spool) and stale[0]["age"] > STALE_AGE


@pytest.mark.parametrize("kind", ["fresh", "directory", "symlink"])
def test_aLockThatIsNotStaleIsLeftAlone(tmp_path: Path, kind: str) -> None:
    """
    A fresh dotlock, or one that is not a regular file (whatever its age),
    is never removed: the login gives up after the wait.
    """
    spool = makeSpool(tmp_path)
    lock = tmp_path / "alice.lock"
    if kind == "fresh":
        lock.write_bytes(b"0")
    elif kind == "directory":
        lock.mkdir()
    else:
        lock.symlink_to(tmp_path / "nowhere")
    old = time.time() - STALE_AGE - 60
    if kind != "fresh":
        os.utime(lock, (old, old), follow_symlinks=False)
    with pytest.raises(MaildropError):
        logIn(maildropOf(spool, tmp_path / "state", wait=0.2))
    assert os.path.lexists(lock)


def asNobody(function: Callable[[], _T]) -> _T:
    """
    Run C{function} in a forked child that has become nobody; return its
    result (or raise what it raised).
    """
    if os.geteuid() != 0:
        pytest.skip("needs root, to become nobody")
    readEnd, writeEnd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(readEnd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome = _attempt(function)
            try:
                data = pickle.dumps(outcome)
            except Exception as error:
                data = pickle.dumps((False, AssertionError(repr(error))))
            with os.fdopen(writeEnd, "wb") as stream:
                stream.write(data)
        finally:
            os._exit(0)
    os.close(writeEnd)
    with os.fdopen(readEnd, "rb") as stream:
        data = stream.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


def test_aDirectoryPopsrvMayNotWriteMeansFcntlAlone(sharedDirectory: Path) -> None:
    """
    If popsrv may not make files in the spool's directory, it locks with
    fcntl alone, and says so once per spool (event mbox-no-dotlock); an
    fcntl lock another process holds is still waited for.
    """
    spool = makeSpool(sharedDirectory)
    spool.chmod(0o666)

    def lockTwice() -> list:
        notes = []
        for _ in range(2):
            opened = OpenedSpool.open(str(spool), None)
            locks = SpoolLocks(opened, wait=1.0)
            assert locks.acquire() is not None
            locks.release()
            opened.close()
            notes += locks.notes
        return notes

    notes = asNobody(lockTwice)
    assert [(fields["event"], fields["path"]) for _, _, fields in notes] == [("mbox-no-dotlock", str(spool))]
    assert "ermission denied" in str(notes[0][2]["reason"])
    assert sorted(os.listdir(sharedDirectory)) == ["alice"]


def test_aStaleDotlockPopsrvMayNotRemoveIsWaitedFor(sharedDirectory: Path) -> None:
    """
    A stale dotlock of another owner in a directory with the sticky bit
    (as a world-writable /var/mail has) cannot be removed: it is waited
    for as a held lock, and reported once (event mbox-stale-dotlock-kept),
    with no traceback; the login then fails as after any wait.
    """
    spool = makeSpool(sharedDirectory)
    spool.chmod(0o666)
    sharedDirectory.chmod(0o1777)
    lock = sharedDirectory / "alice.lock"
    lock.write_bytes(b"12345\n")
    old = time.time() - STALE_AGE - 60
    os.utime(lock, (old, old))

    def lockOnce() -> list:
        opened = OpenedSpool.open(str(spool), None)
        locks = SpoolLocks(opened, wait=0.3)
        try:
            locks.acquire()
        except MaildropError as error:
            return [str(error)] + [fields for _, _, fields in locks.notes]
        finally:
            opened.close()
        return ["locked"]

    outcome = asNobody(lockOnce)
    assert outcome[0] == f"{spool} is locked by another program (dotlock)"
    events = [fields["event"] for fields in outcome[1:]]
    assert events == ["mbox-stale-dotlock-kept", "mbox-lock-timeout"]
    assert outcome[1]["error"] == "Operation not permitted" and outcome[1]["age"] > STALE_AGE
    assert lock.exists()


def test_aSpoolPopsrvMayOnlyReadIsServedButNotRewritten(sharedDirectory: Path) -> None:
    """
    A spool popsrv may only read is served (locked with a read lock);
    deleting from it fails, and removes nothing.
    """
    spool = makeSpool(sharedDirectory)
    spool.chmod(0o644)
    state = sharedDirectory / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    before = spool.read_bytes()

    def session() -> str:
        maildrop = maildropOf(spool, state)
        maildrop.lock()
        uid = list(maildrop.listMessages())[0].uid  # type: ignore[arg-type]
        try:
            maildrop.commit(frozenset([uid]), frozenset())
        except MaildropError as error:
            return str(error)
        finally:
            maildrop.release()
        return "committed"

    assert "may not write" in asNobody(session)
    assert spool.read_bytes() == before


LOCK_HOLDER = """
import sys
from popsrv.store.mbox.locking import SpoolLocks
from popsrv.store.mbox.spool import OpenedSpool
locks = SpoolLocks(OpenedSpool.open(sys.argv[1], None))
locks.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def test_aDotlockLeftByAKilledPopsrvIsRemovedAtOnce(tmp_path: Path, spawn) -> None:  # noqa: F811
    """
    popsrv's own dotlock, left by a popsrv process of this host killed while
    it held it, is removed at the next login without waiting for it to
    age; its first line is the process id, as liblockfile's are.
    """
    spool = makeSpool(tmp_path)
    holder = spawn(LOCK_HOLDER, str(spool))
    assert readLine(holder) == b"locked\n"
    content = Path(f"{spool}.lock").read_bytes()
    assert content.split(b"\n")[0] == str(holder.pid).encode()
    killAndWait(holder)
    assert os.path.exists(f"{spool}.lock")
    started = time.monotonic()
    with capturedLogs() as events:
        assert logIn(maildropOf(spool, tmp_path / "state", wait=5.0)) == 1
    assert time.monotonic() - started < 2
    assert [event["why"] for event in events if event.get("event") == "mbox-stale-dotlock"] == [
        "its popsrv process is gone"
    ]


@pytest.mark.parametrize("owner", ["live", "other host", "other namespace", "not popsrv"])
def test_aDotlockOfAnotherOwnerIsNotTakenForDead(tmp_path: Path, owner: str) -> None:
    """
    A fresh dotlock is removed early only if it is popsrv's, of this host and
    process namespace, and its process is gone.
    """
    from popsrv.store.mbox.locking import _owner

    spool = makeSpool(tmp_path)
    mine = _owner().split(b"\n")[1].split(b" ")
    deadPid = b"%d" % (2**22 + 12345)
    content = {
        "live": _owner(),
        "other host": b"%s\npopsrv elsewhere.example %s\n" % (deadPid, mine[2]),
        "other namespace": b"%s\npopsrv %s pid:[1]\n" % (deadPid, mine[1]),
        "not popsrv": b"%s\n" % deadPid,
    }[owner]
    Path(f"{spool}.lock").write_bytes(content)
    with pytest.raises(MaildropError):
        logIn(maildropOf(spool, tmp_path / "state", wait=0.2))
    assert Path(f"{spool}.lock").read_bytes() == content


def test_aDotlockIsPopsrvsOnlyIfItIsPopsrvsFile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    While procmail's lockfile holds the dotlock, another user who may write
    the directory links popsrv's unique file to a name of their own as
    popsrv links it to the dotlock's name (its count of links is two then
    too): popsrv does not take the dotlock for its own, and waits, as
    liblockfile would (it compares the dotlock's inode with its file's).
    """
    spool = makeSpool(tmp_path)
    subprocess.run([lockfileProgram(), "-r0", f"{spool}.lock"], check=True)
    held = Path(f"{spool}.lock").read_bytes()
    realLink = os.link

    def linkedByAnother(source: str, target: str, **kwargs: object) -> None:
        if source.startswith(".popsrv-lk."):
            realLink(source, "planted", **kwargs)  # type: ignore[arg-type]
        realLink(source, target, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", linkedByAnother)
    pauses: List[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        assert Path(f"{spool}.lock").read_bytes() == held, "the dotlock was taken from procmail"
        (tmp_path / "planted").unlink()
        if len(pauses) == 2:
            os.unlink(f"{spool}.lock")

    locks = lockSpool(spool, pause)
    assert len(pauses) == 2
    assert b"popsrv" in Path(f"{spool}.lock").read_bytes()
    locks.release()
    assert not os.path.exists(f"{spool}.lock")
