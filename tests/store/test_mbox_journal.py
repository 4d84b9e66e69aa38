"""
Crash safety of deletions from mbox spools (L{popsrv.store.mbox.journal}):
a helper process commits deletions and is killed (SIGKILL, a real C{kill
-9}) after every single write, flush, cut and removal of the rewrite, in
turn; after each, the next login finishes or drops the journal, and every
message must be in the spool exactly once, or deleted, and mail delivered
after the crash must be there too.  Journals that are incomplete, corrupt,
or for a spool that changed are never applied.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from twisted.logger import capturedLogs

import popsrv
from popsrv.store.mbox import MboxMaildrop, deliver
from popsrv.store.mbox.journal import Plan, readJournal, recover, writeJournal
from popsrv.store.mbox.parsing import scanSpool
from popsrv.store.mbox.spool import OpenedSpool
from popsrv.store.mbox.state import SpoolState

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(popsrv.__file__)))
HELPER_TIMEOUT = 30.0

COMMITTER = """
import os, signal, sys
from popsrv.store.mbox import journal
from popsrv.store.mbox.maildrop import MboxMaildrop
journal.CHUNK = 97
spool, state, stopAt, deleted = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
steps = []
def checkpoint(step):
    steps.append(step)
    if len(steps) == stopAt:
        os.kill(os.getpid(), signal.SIGKILL)
maildrop = MboxMaildrop(spool, "alice", state, checkpoint=checkpoint)
maildrop.lock()
uids = [info.uid for info in maildrop.listMessages()]
if deleted == "-":
    print(len(steps), flush=True)
    sys.exit(0)
maildrop.commit(frozenset(uids[int(n)] for n in deleted.split(",")), frozenset())
maildrop.release()
print(len(steps), flush=True)
"""

MESSAGES = [b"Subject: message %d\n\n%s\n" % (n, b"body line %d\n" % n * (n * 7 % 13 + 1)) for n in range(8)]
DELETED = (0, 3, 4, 7)


def runCommitter(spool: Path, state: Path, stopAt: int, deleted: str) -> Optional[int]:
    """
    Run the helper; return how many steps it went through, or C{None} if
    it was killed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", COMMITTER, str(spool), str(state), str(stopAt), deleted],
                            env=env, capture_output=True, timeout=HELPER_TIMEOUT)
    if result.returncode == -signal.SIGKILL:
        return None
    assert result.returncode == 0, result.stderr.decode()
    return int(result.stdout)


def makeSpool(path: Path) -> None:
    for number, message in enumerate(MESSAGES):
        deliver(str(path), message, sender=f"s{number}@example.org", when=1_700_000_000 + number)


def messagesOf(data: bytes, tmp_path: Path) -> List[bytes]:
    """
    The messages of a spool's octets (separator line and content, as stored).
    """
    path = tmp_path / "parse"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        scan = scanSpool(fd)
    finally:
        os.close(fd)
    return [data[scan.starts[n]:scan.nextStart(n)] for n in range(len(scan))]


def logIn(spool: Path, state: Path) -> int:
    maildrop = MboxMaildrop(str(spool), "alice", str(state))
    maildrop.lock()
    try:
        return len(maildrop.listMessages())  # type: ignore[arg-type]
    finally:
        maildrop.release()


def expectedStates(tmp_path: Path, original: bytes) -> Tuple[bytes, bytes]:
    """
    The spool before and after the deletions.
    """
    messages = messagesOf(original, tmp_path)
    return original, b"".join(m for n, m in enumerate(messages) if n not in DELETED)


def test_killedAtEveryStepLosesNothing(tmp_path: Path) -> None:
    """
    The committing process killed after each step in turn: the next login
    leaves the spool exactly as it was or exactly rewritten (every message
    once, or deleted), and no journal behind.
    """
    template = tmp_path / "template"
    makeSpool(template)
    original = template.read_bytes()
    before, after = expectedStates(tmp_path, original)
    spool, state = tmp_path / "alice", tmp_path / "state"
    spool.write_bytes(original)
    total = runCommitter(spool, state, 0, ",".join(map(str, DELETED)))
    assert total is not None and total > 20
    assert spool.read_bytes() == after
    outcomes = set()
    for stopAt in range(1, total + 1):
        spool.write_bytes(original)
        assert runCommitter(spool, state, stopAt, ",".join(map(str, DELETED))) is None
        with capturedLogs() as events:
            logIn(spool, state)
        result = spool.read_bytes()
        assert result in (before, after), f"killed at step {stopAt}"
        outcomes.add(result == after)
        assert list((state / "mbox").glob("*.journal*")) == []
        replayed = [event for event in events if event.get("event") == "mbox-journal-replayed"]
        assert len(replayed) <= 1
    assert outcomes == {False, True}


@pytest.mark.parametrize("stopAt", [12, 40, -3])
def test_mailDeliveredAfterTheCrashIsKept(tmp_path: Path, stopAt: int) -> None:
    """
    Mail delivered between the crash and the next login (the delivery
    agent removed the dead process's dotlock) is kept, once, whatever the
    step of the crash.
    """
    template = tmp_path / "template"
    makeSpool(template)
    original = template.read_bytes()
    before, after = expectedStates(tmp_path, original)
    spool, state = tmp_path / "alice", tmp_path / "state"
    spool.write_bytes(original)
    total = runCommitter(spool, state, 0, ",".join(map(str, DELETED)))
    assert total is not None
    spool.write_bytes(original)
    assert runCommitter(spool, state, stopAt % total, ",".join(map(str, DELETED))) is None
    late = b"Subject: late\n\ndelivered after the crash\n"
    deliver(str(spool), late, sender="late@example.org", when=1_800_000_000)
    logIn(spool, state)
    result = spool.read_bytes()
    lateMessages = [m for m in messagesOf(result, tmp_path) if b"delivered after the crash" in m]
    assert len(lateMessages) == 1
    assert result[:result.index(lateMessages[0])] in (before, after)
    assert list((state / "mbox").glob("*.journal*")) == []


def test_killedWhileReplayingLosesNothing(tmp_path: Path) -> None:
    """
    A login killed while it replays a journal (at every step of the
    replay) leaves a journal the next login replays to the same end.
    """
    template = tmp_path / "template"
    makeSpool(template)
    original = template.read_bytes()
    _, after = expectedStates(tmp_path, original)
    spool, state = tmp_path / "alice", tmp_path / "state"
    spool.write_bytes(original)
    total = runCommitter(spool, state, 0, ",".join(map(str, DELETED)))
    assert total is not None
    # Killed in the middle of writing the spool: the journal is complete.
    crashAt = total - 6
    spool.write_bytes(original)
    assert runCommitter(spool, state, crashAt, ",".join(map(str, DELETED))) is None
    journal = next((state / "mbox").glob("*.journal"))
    crashed, journalled = spool.read_bytes(), journal.read_bytes()
    replaySteps = runCommitter(spool, state, 0, "-")
    assert replaySteps is not None and replaySteps > 5
    assert spool.read_bytes() == after
    for stopAt in range(1, replaySteps + 1):
        spool.write_bytes(crashed)
        journal.write_bytes(journalled)
        assert runCommitter(spool, state, stopAt, "-") is None
        logIn(spool, state)
        assert spool.read_bytes() == after, f"replay killed at step {stopAt}"


def openSpool(path: Path) -> OpenedSpool:
    return OpenedSpool.open(str(path), None)


def test_incompleteOrCorruptJournalsAreDropped(tmp_path: Path) -> None:
    """
    A journal cut short or damaged (the crash came while it was written,
    before the spool was touched) is removed; the spool is left alone
    (event mbox-journal-discarded).
    """
    spool, state = tmp_path / "alice", tmp_path / "state"
    makeSpool(spool)
    original = spool.read_bytes()
    files = SpoolState(str(state), str(spool))
    files.makeDirectory()
    opened = openSpool(spool)
    assert opened.file is not None
    plan = Plan(opened.file.identity, 100, len(original), ((0, 50),))
    writeJournal(files.path("journal"), opened.file, plan)
    complete = Path(files.path("journal")).read_bytes()
    opened.close()
    for damaged in (complete[:-1], complete[:len(complete) // 2], complete[:10],
                    complete[:-40] + bytes([complete[-40] ^ 1]) + complete[-39:], b""):
        Path(files.path("journal")).write_bytes(damaged)
        with capturedLogs() as events:
            logIn(spool, state)
        assert spool.read_bytes() == original
        assert not os.path.exists(files.path("journal"))
        assert [event["what"] for event in events if event.get("event") == "mbox-journal-discarded"] == [
            "incomplete"
        ]


def test_journalOfAnotherSpoolIsSetAside(tmp_path: Path) -> None:
    """
    A journal whose spool was replaced (another inode), or changed beyond
    what the rewrite explains, is never applied: it is kept aside, for the
    operator.
    """
    spool, state = tmp_path / "alice", tmp_path / "state"
    makeSpool(spool)
    original = spool.read_bytes()
    files = SpoolState(str(state), str(spool))
    files.makeDirectory()
    opened = openSpool(spool)
    assert opened.file is not None
    writeJournal(files.path("journal"), opened.file, Plan(opened.file.identity, 0, len(original), ((0, 60),)))
    opened.close()
    # Replaced by a copy: another inode.
    (tmp_path / "copy").write_bytes(original)
    os.replace(tmp_path / "copy", spool)
    with capturedLogs() as events:
        logIn(spool, state)
    assert spool.read_bytes() == original
    assert [event["what"] for event in events if event.get("event") == "mbox-journal-discarded"] == ["orphaned"]
    assert len(list((state / "mbox").glob("*.journal.orphaned-*"))) == 1
    # Rewritten by another program: same inode, other octets.
    opened = openSpool(spool)
    assert opened.file is not None
    os.pwrite(opened.file.fd, b"XXXXX", 0)
    assert recover(files.path("journal"), opened.file) is None
    writeJournal(files.path("journal"), opened.file, Plan(opened.file.identity, 0, len(original), ((0, 60),)))
    os.pwrite(opened.file.fd, b"YYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY", 0)
    os.ftruncate(opened.file.fd, len(original) - 70)
    outcome = recover(files.path("journal"), opened.file)
    assert outcome is not None and outcome[0] == "orphaned"
    opened.close()


def test_theJournalIsInTheStateDirectoryAndHoldsTheOriginalOctets(tmp_path: Path) -> None:
    """
    The journal records the spool's identity, where the rewrite starts, the
    original octets from there to the end and a checksum; it is read back
    whole.
    """
    spool, state = tmp_path / "alice", tmp_path / "state"
    makeSpool(spool)
    original = spool.read_bytes()
    files = SpoolState(str(state), str(spool))
    files.makeDirectory()
    opened = openSpool(spool)
    assert opened.file is not None
    plan = Plan(opened.file.identity, 33, len(original), ((0, 10), (20, 30)))
    writeJournal(files.path("journal"), opened.file, plan)
    journal = readJournal(files.path("journal"))
    try:
        assert journal.plan == plan
        assert os.pread(journal.stream.fileno(), len(original) - 33, journal.original) == original[33:]
        assert list(plan.kept()) == [(10, 20), (30, len(original) - 33)]
        assert plan.newEnd() == len(original) - 20
    finally:
        journal.stream.close()
        opened.close()
    assert Path(files.path("journal")).parent == state / "mbox"
    assert os.listdir(tmp_path) != [] and "alice.journal" not in os.listdir(tmp_path)


# A login in a process whose files may not grow past a size (RLIMIT_FSIZE):
# a write that crosses it writes less than it was given, as on a full disk,
# and the next one fails (EFBIG).
LIMITED_LOGIN = """
import resource, signal, sys
from popsrv.store.mbox.maildrop import MboxMaildrop
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
maildrop = MboxMaildrop(sys.argv[1], "alice", sys.argv[2])
maildrop.lock()
try:
    maildrop.listMessages()
finally:
    maildrop.release()
"""


@pytest.mark.parametrize("cut", ["spool", "extended journal"])
def test_aShortWriteNeverLosesMail(tmp_path: Path, cut: str) -> None:
    """
    A write that writes less than it was given (a full disk) while a
    journal is replayed, in the spool's last write or in the checksum of
    the journal extended with mail delivered since the crash, fails the
    replay: the journal is kept, never replaced by one cut short, and the
    next login replays it whole.
    """
    template = tmp_path / "template"
    makeSpool(template)
    original = template.read_bytes()
    _, after = expectedStates(tmp_path, original)
    spool, state = tmp_path / "alice", tmp_path / "state"
    spool.write_bytes(original)
    total = runCommitter(spool, state, 0, ",".join(map(str, DELETED)))
    assert total is not None
    # Killed while it wrote the spool: the journal is complete.
    spool.write_bytes(original)
    assert runCommitter(spool, state, total - 6, ",".join(map(str, DELETED))) is None
    journal = next((state / "mbox").glob("*.journal"))
    late = b""
    if cut == "spool":
        # Within the last write of the kept octets.
        limit = len(after) - 10
    else:
        deliver(str(spool), b"Subject: late\n\ndelivered after the crash\n", sender="l@example.org",
                when=1_800_000_000)
        late = spool.read_bytes()[len(original):]
        # Within the checksum at the end of the extended journal, which has
        # the late mail too (and the spool's new size in its header).
        extended = journal.stat().st_size + len(late) + len(str(len(original) + len(late))) - len(str(len(original)))
        limit = extended - 10
    env = dict(os.environ)
    env["PYTHONPATH"] = SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    limited = subprocess.run([sys.executable, "-c", LIMITED_LOGIN, str(spool), str(state), str(limit)],
                             env=env, capture_output=True, timeout=HELPER_TIMEOUT)
    assert limited.returncode in (0, 1), limited.stderr.decode()
    logIn(spool, state)
    assert spool.read_bytes() == after + late
    assert list((state / "mbox").glob("*.journal*")) == []
