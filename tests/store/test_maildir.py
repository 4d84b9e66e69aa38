"""
Tests of the Maildir storage backend (L{popsrv.store.maildir}) and of the
realm that hands it out (L{popsrv.store.realm.MaildirRealm}), on real temporary
directories, with real processes where locking and crashes are concerned.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer
from zope.interface.verify import verifyObject

import popsrv
from popsrv.errors import MaildropLocked, MessageVanished
from popsrv.interfaces import IMaildrop
from popsrv.store.maildir import LOCK_FILE, MaildirMaildrop, deliver, hasMessages, uidFor
from popsrv.store.realm import MaildirRealm, UnsafeMailboxName
from popsrv.testing import POP3ClientError, connect
from popsrv.wire.framing import normalizedSize

# The directory that holds the popsrv package under test, so that helper
# processes import the same code as this test (not an installed copy).
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(popsrv.__file__)))
DEADLINE = 10.0
POLL_DEADLINE = 5.0


# Helpers


def writeMessage(directory, name, content: bytes) -> str:
    """
    Write a message file directly (as another program would); return its path.
    """
    path = os.path.join(os.fsencode(directory), os.fsencode(name))
    with open(path, "wb") as f:
        f.write(content)
    return os.fsdecode(path)


def listOnce(path, name="alice"):
    """
    Run one session's lock, listMessages and release on a new maildrop object;
    return the snapshot.
    """
    maildrop = MaildirMaildrop(str(path), name)
    maildrop.lock()
    try:
        return list(maildrop.listMessages())
    finally:
        maildrop.release()


def curNames(path) -> list[str]:
    """
    Return the sorted file names in a Maildir's C{cur/}.
    """
    return sorted(os.listdir(os.path.join(str(path), "cur")))


def wireForm(content: bytes) -> bytes:
    """
    Return what RETR must send for a stored message before dot-stuffing,
    built line by line: every line ended by CRLF, a bare LF made CRLF, and a
    CRLF added after an unterminated last line.
    """
    parts = content.split(b"\n")
    lines = [part[:-1] if part.endswith(b"\r") else part for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return b"".join(line + b"\r\n" for line in lines)


def makePortal(root) -> Portal:
    """
    Return a portal over a L{MaildirRealm} at C{root} with the user alice.
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice", b"secret")
    return Portal(MaildirRealm(str(root)), [checker])


def treeOf(path) -> set[str]:
    """
    Return every path below a directory, relative to it.
    """
    found = set()
    for directory, subdirectories, files in os.walk(path):
        for name in subdirectories + files:
            found.add(os.path.relpath(os.path.join(directory, name), path))
    return found


@implementer(IConsumer)
class RecordingConsumer:
    """
    A consumer that records what is written, and pulls a pull producer
    until it unregisters (as a transport with an empty buffer would).
    """

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.producer = None
        self.registrations = 0
        self.unregistrations = 0

    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer
        self.registrations += 1
        if not streaming:
            for _ in range(100000):
                if self.producer is None:
                    return
                producer.resumeProducing()
            raise AssertionError("producer never finished")

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistrations += 1

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def sendResult(maildrop: MaildirMaildrop, uid: str):
    """
    Call sendMessage with a recording consumer; return the consumer and the
    result the Deferred fired with (a Failure on error).
    """
    consumer = RecordingConsumer()
    results = []
    d = maildrop.sendMessage(uid, consumer)
    assert isinstance(d, defer.Deferred)
    d.addBoth(results.append)
    assert len(results) == 1, "sendMessage did not finish synchronously"
    return consumer, results[0]


@pytest.fixture
def spawn():
    """
    Start Python helper processes (importing popsrv from the tree under
    test); kill whichever are still running at the end of the test.
    """
    processes = []

    def start(code: str, *args: str) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = SOURCE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()


def readLine(process: subprocess.Popen) -> bytes:
    """
    Read one line from a helper process, failing (not hanging) if none comes
    within the deadline or the process dies first.
    """
    ready, _, _ = select.select([process.stdout], [], [], DEADLINE)
    if not ready:
        raise AssertionError("helper process printed nothing in time")
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise AssertionError(f"helper process died: {process.stderr.read()!r}")
    return line


def killAndWait(process: subprocess.Popen) -> None:
    """
    SIGKILL a helper process and wait for it to be gone.
    """
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=DEADLINE) == -signal.SIGKILL


# 1. Locking within a process


def test_lockCreatesMaildirAndIsExclusive(tmp_path):
    """
    lock() creates cur/ new/ tmp/; a second maildrop on the same path gets
    MaildropLocked until the first releases.
    """
    path = tmp_path / "alice"
    first = MaildirMaildrop(str(path), "alice")
    assert not path.exists()
    first.lock()
    for sub in ("cur", "new", "tmp"):
        assert (path / sub).is_dir()
    second = MaildirMaildrop(str(path), "alice")
    with pytest.raises(MaildropLocked):
        second.lock()
    first.release()
    second.lock()
    with pytest.raises(MaildropLocked):
        MaildirMaildrop(str(path), "alice").lock()
    second.release()
    first.lock()
    first.release()


# 2. Locking across processes


LOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_lockExclusiveAcrossProcessesAndFreedByDeath(tmp_path, spawn):
    """
    A lock held by another process excludes us, and a SIGKILLed holder never
    leaves the maildrop locked.
    """
    path = tmp_path / "alice"
    maildrop = MaildirMaildrop(str(path), "alice")
    maildrop.lock()
    maildrop.release()
    holder = spawn(LOCK_HOLDER, str(path / LOCK_FILE))
    assert readLine(holder) == b"locked\n"
    with pytest.raises(MaildropLocked):
        maildrop.lock()
    killAndWait(holder)
    maildrop.lock()
    maildrop.release()


# 3. Moving new mail


def test_newMailMovedToCurWithSizes(tmp_path):
    """
    listMessages moves new/ mail to cur/ as <base>,S=<file size>,W=<POP3
    size>:2, and reports the POP3 size.
    """
    content = b"Subject: bare\n\nline one\nline two\n"
    name = deliver(str(tmp_path), content)
    virtual = normalizedSize([content])
    assert virtual != len(content)
    [info] = listOnce(tmp_path)
    assert os.listdir(tmp_path / "new") == []
    assert curNames(tmp_path) == [f"{name},S={len(content)},W={virtual}:2,"]
    assert info.size == virtual == len(wireForm(content))
    assert info.uid == name
    assert not info.seen
    assert (tmp_path / "cur" / curNames(tmp_path)[0]).read_bytes() == content


# 4. Stable uids and size fields


def test_uidsStableAcrossSessionsAndRestart(tmp_path):
    """
    The same uids come from two sessions of one maildrop object and from a
    new object, and a uid is the delivered base name without size fields.
    """
    names = [deliver(str(tmp_path), b"Subject: %d\n\nbody\n" % (i,)) for i in range(3)]
    maildrop = MaildirMaildrop(str(tmp_path), "alice")
    sessions = []
    for _ in range(2):
        maildrop.lock()
        sessions.append([info.uid for info in maildrop.listMessages()])
        maildrop.release()
    sessions.append([info.uid for info in listOnce(tmp_path)])
    assert sessions[0] == sessions[1] == sessions[2]
    assert sorted(sessions[0]) == sorted(names)
    for fileName in curNames(tmp_path):
        base = fileName.partition(":")[0]
        assert ",S=" in base and ",W=" in base
        assert uidFor(base) == base.split(",")[0]


def test_virtualSizeInNameIsTrusted(tmp_path):
    """
    A cur/ name with ,W=<n> is trusted: its size is n whatever the content,
    and the file is not renamed.
    """
    (tmp_path / "cur").mkdir()
    (tmp_path / "new").mkdir()
    fileName = "1000.M1P1.trusted,S=5,W=123:2,"
    writeMessage(tmp_path / "cur", fileName, b"hello")
    [info] = listOnce(tmp_path)
    assert info.size == 123
    assert info.uid == "1000.M1P1.trusted"
    assert curNames(tmp_path) == [fileName]


def test_physicalSizeIsMeasuredAndRecorded(tmp_path):
    """
    A cur/ name with only ,S=<n> is measured (S is not the POP3 size), gets
    ,W= added to its name, and keeps its uid.
    """
    (tmp_path / "cur").mkdir()
    (tmp_path / "new").mkdir()
    content = b"Subject: s\n\na\nb\n"
    fileName = f"1000.M1P1.measured,S={len(content)}:2,F"
    writeMessage(tmp_path / "cur", fileName, content)
    virtual = len(content) + content.count(b"\n")
    [first] = listOnce(tmp_path)
    assert first.size == normalizedSize([content]) == virtual
    assert first.uid == "1000.M1P1.measured"
    assert curNames(tmp_path) == [f"1000.M1P1.measured,S={len(content)},W={virtual}:2,F"]
    [second] = listOnce(tmp_path)
    assert second == first


# 5. Unusable base names


ODD_BASES = {
    "long": "1000.M1P1." + "x" * 90,
    "nonASCII": "1000.M1P1.h\u00e9te",
    "space": "1000.M1P1.two words",
    "notUTF8": os.fsdecode(b"1000.M1P1.\xff\xfe"),
}


@pytest.mark.parametrize("where", ["new", "cur"])
@pytest.mark.parametrize("kind", sorted(ODD_BASES))
def test_unusableBaseNamesGetStableUids(tmp_path, kind, where):
    """
    A base name that is not 1-70 printable ASCII octets yields a distinct uid
    of at most 70 octets in 0x21..0x7E, the same in every session.
    """
    (tmp_path / "cur").mkdir()
    (tmp_path / "new").mkdir()
    base = ODD_BASES[kind]
    suffix = ":2," if where == "cur" else ""
    # Different sizes tell the two messages apart (their numbering may change
    # once their names carry sizes; their uids must not).
    writeMessage(tmp_path / where, base + suffix, b"one\n")
    writeMessage(tmp_path / where, base + "2" + suffix, b"three\n")
    uids = {info.size: info.uid for info in listOnce(tmp_path)}
    assert sorted(uids) == [5, 7]
    assert len(set(uids.values())) == 2
    for uid in uids.values():
        assert 1 <= len(uid) <= 70
        assert all(0x21 <= ord(c) <= 0x7E for c in uid), uid
    assert {info.size: info.uid for info in listOnce(tmp_path)} == uids
    assert {info.size: info.uid for info in listOnce(tmp_path)} == uids


# 6. Exact sizes, end to end


SIZE_CASES = {
    "crlf": b"Subject: crlf\r\n\r\nbody line\r\n",
    "bareLF": b"Subject: lf\n\nbody line\nanother\n",
    "noFinalNewline": b"Subject: nonl\r\n\r\nlast line without end",
    "empty": b"",
    "dotLines": b".\r\n..\n.starts with a dot\r\n.\nend\n",
    "longLine": b"Subject: long\n\n" + b"x" * 2000 + b"\n",
    "eightBit": b"Subject: 8bit\n\n" + bytes(range(256)) + b"\n\xff\xfe\x80\r\n",
    "trailingCR": b"Subject: cr\n\nends with a CR\r",
    "crlfAcrossReadChunks": b"y" * 65535 + b"\r\n" + b"z" * 70000 + b"\n",
}


@pytest.mark.parametrize("kind", sorted(SIZE_CASES))
def test_sizesAreExactEndToEnd(tmp_path, kind):
    """
    The size LIST reports is the number of octets RETR sends before
    dot-stuffing, and RETR sends the CRLF-normalized message.
    """
    content = SIZE_CASES[kind]
    deliver(str(tmp_path / "alice"), content)
    client = connect(makePortal(tmp_path))
    client.login("alice", "secret")
    [line] = client.multiline("LIST")
    number, size = (int(field) for field in line.split())
    assert number == 1
    retrieved = client.retrieve(1)
    assert retrieved == wireForm(content)
    assert size == len(retrieved) == normalizedSize([content])
    assert client.command("STAT") == f"+OK 1 {size}"
    client.quit()


# 7. Messages renamed or removed after the snapshot


def test_renamedMessageStillRetrieved(tmp_path):
    """
    A message whose flags (and so file name) another program changed after
    the snapshot is still sent, whole.
    """
    content = b"Subject: flagged\n\n" + b"0123456789" * 100 + b"\n"
    deliver(str(tmp_path), content)
    maildrop = MaildirMaildrop(str(tmp_path), "alice", chunkSize=64)
    maildrop.lock()
    [info] = maildrop.listMessages()
    [fileName] = curNames(tmp_path)
    assert fileName.endswith(":2,")
    os.rename(tmp_path / "cur" / fileName, tmp_path / "cur" / (fileName + "F"))
    consumer, result = sendResult(maildrop, info.uid)
    assert result is None
    assert b"".join(consumer.writes) == content
    assert len(consumer.writes) > 1
    assert consumer.registrations == consumer.unregistrations == 1
    maildrop.release()


def test_deletedMessageVanishes(tmp_path):
    """
    sendMessage fails with MessageVanished, before registering a producer,
    for a message deleted after the snapshot.
    """
    deliver(str(tmp_path), b"Subject: gone\n\nbody\n")
    deliver(str(tmp_path), b"Subject: stays\n\nbody\n")
    maildrop = MaildirMaildrop(str(tmp_path), "alice")
    maildrop.lock()
    infos = maildrop.listMessages()
    target = next(name for name in curNames(tmp_path) if name.startswith(infos[0].uid + ","))
    os.unlink(tmp_path / "cur" / target)
    consumer, result = sendResult(maildrop, infos[0].uid)
    assert result.check(MessageVanished)
    assert consumer.registrations == 0
    assert consumer.writes == []
    consumer, result = sendResult(maildrop, infos[1].uid)
    assert result is None
    assert b"".join(consumer.writes) == b"Subject: stays\n\nbody\n"
    maildrop.release()


def test_vanishedMessageOverPOP3(tmp_path):
    """
    Through POP3, RETR of a message deleted after login answers -ERR and the
    session goes on.
    """
    maildir = tmp_path / "alice"
    first = deliver(str(maildir), b"Subject: one\n\nfirst\n")
    deliver(str(maildir), b"Subject: two\n\nsecond\n")
    client = connect(makePortal(tmp_path))
    client.login("alice", "secret")
    [uidLine] = [line for line in client.multiline("UIDL") if line.endswith(b" " + first.encode())]
    number = int(uidLine.split()[0])
    for name in curNames(maildir):
        if name.startswith(first + ","):
            os.unlink(maildir / "cur" / name)
    with pytest.raises(POP3ClientError):
        client.retrieve(number)
    assert client.command("NOOP") == "+OK"
    assert client.retrieve(3 - number) == b"Subject: two\r\n\r\nsecond\r\n"
    client.quit()
    assert not client.connected


# 8. Committing


def test_commitDeletesAndMarksSeen(tmp_path):
    """
    commit() unlinks deleted messages and adds S to the sorted flags of seen
    ones, keeping their uids; the next session reports them seen.
    """
    (tmp_path / "cur").mkdir()
    (tmp_path / "new").mkdir()
    files = {
        "1001.plain": ("1001.plain,S=3,W=5:2,", "1001.plain,S=3,W=5:2,S"),
        "1002.flagged": ("1002.flagged,S=3,W=5:2,FT", "1002.flagged,S=3,W=5:2,FST"),
        "1003.keyword": ("1003.keyword,S=3,W=5:2,Ra", "1003.keyword,S=3,W=5:2,RSa"),
        "1004.already": ("1004.already,S=3,W=5:2,S", "1004.already,S=3,W=5:2,S"),
        "1005.untouched": ("1005.untouched,S=3,W=5:2,F", "1005.untouched,S=3,W=5:2,F"),
        "1006.deleted": ("1006.deleted,S=3,W=5:2,", None),
        "1007.deletedSeen": ("1007.deletedSeen,S=3,W=5:2,", None),
    }
    for before, _ in files.values():
        writeMessage(tmp_path / "cur", before, b"a\nb")
    maildrop = MaildirMaildrop(str(tmp_path), "alice")
    maildrop.lock()
    infos = maildrop.listMessages()
    assert [info.uid for info in infos] == sorted(files)
    assert [info.seen for info in infos] == [False, False, False, True, False, False, False]
    maildrop.commit(
        frozenset({"1006.deleted", "1007.deletedSeen"}),
        frozenset({"1001.plain", "1002.flagged", "1003.keyword", "1004.already", "1007.deletedSeen"}),
    )
    maildrop.release()
    assert curNames(tmp_path) == sorted(after for _, after in files.values() if after)
    for name in curNames(tmp_path):
        assert (tmp_path / "cur" / name).read_bytes() == b"a\nb"
    after = listOnce(tmp_path)
    assert {info.uid: info.seen for info in after} == {
        "1001.plain": True,
        "1002.flagged": True,
        "1003.keyword": True,
        "1004.already": True,
        "1005.untouched": False,
    }


# 9. Mail arriving during a session


def test_mailDeliveredDuringSessionWaitsForNextSession(tmp_path):
    """
    Mail delivered after the snapshot is not in the session, survives its
    DELE and QUIT, and appears in the next session.
    """
    maildir = tmp_path / "alice"
    deliver(str(maildir), b"Subject: old\n\nold\n")
    client = connect(makePortal(tmp_path))
    client.login("alice", "secret")
    newName = deliver(str(maildir), b"Subject: new\n\nnew\n")
    assert client.command("STAT").startswith("+OK 1 ")
    assert len(client.multiline("UIDL")) == 1
    with pytest.raises(POP3ClientError):
        client.command("RETR 2")
    client.command("DELE 1")
    client.quit()
    assert os.listdir(maildir / "new") == [newName]
    [info] = listOnce(maildir)
    assert info.uid == newName
    client = connect(makePortal(tmp_path))
    client.login("alice", "secret")
    assert client.retrieve(1) == b"Subject: new\r\n\r\nnew\r\n"
    client.quit()


# 10. Dot files


def test_dotFilesIgnored(tmp_path):
    """
    Dot files in cur/ and new/ are neither messages nor moved, and do not make
    a Maildir count as holding mail.
    """
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    writeMessage(tmp_path / "cur", ".hidden:2,", b"not a message\n")
    writeMessage(tmp_path / "new", ".inprogress", b"not a message\n")
    assert not hasMessages(str(tmp_path))
    assert listOnce(tmp_path) == []
    name = deliver(str(tmp_path), b"Subject: real\n\nbody\n")
    assert hasMessages(str(tmp_path))
    [info] = listOnce(tmp_path)
    assert info.uid == name
    assert os.listdir(tmp_path / "new") == [".inprogress"]
    assert sorted(n for n in curNames(tmp_path) if n.startswith(".")) == [".hidden:2,"]


# 11. Hostile user names


HOSTILE_NAMES = ["..", "../x", "a/b", ".hidden", "a\x00b", "a\nb", "x" * 256, "", ".", "a\\b", "\u0085x"]


@pytest.mark.parametrize(
    "name",
    HOSTILE_NAMES + [name.encode("utf-8") for name in HOSTILE_NAMES] + [b"\xff\xfe", b"a\xc0\xafb"],
    ids=repr,
)
def test_hostileUserNamesRejected(tmp_path, name):
    """
    A login name that is not one safe path component fails the login with
    UnauthorizedLogin and creates nothing anywhere.
    """
    root = tmp_path / "root"
    root.mkdir()
    before = (treeOf(tmp_path), sorted(os.listdir(tmp_path.parent)))
    with pytest.raises(UnauthorizedLogin) as raised:
        MaildirRealm(str(root)).requestAvatar(name, None, IMaildrop)
    assert isinstance(raised.value, UnsafeMailboxName)
    assert (treeOf(tmp_path), sorted(os.listdir(tmp_path.parent))) == before


@pytest.mark.parametrize("name", ["alice", "alice@example.com", b"alice", b"alice@example.com", "x" * 255])
def test_normalUserNamesResolveUnderRoot(tmp_path, name):
    """
    A safe login name gives a maildrop at <root>/<name>, which lock() creates
    there and nowhere else.
    """
    root = tmp_path / "root"
    root.mkdir()
    text = name.decode("utf-8") if isinstance(name, bytes) else name
    interface, maildrop, logout = MaildirRealm(str(root)).requestAvatar(name, None, IMaildrop)
    assert interface is IMaildrop
    assert maildrop.name == text
    assert maildrop.path == os.path.join(str(root), text)
    outside = sorted(os.listdir(tmp_path))
    maildrop.lock()
    maildrop.release()
    logout()
    assert os.listdir(root) == [text]
    assert sorted(os.listdir(root / text)) == sorted(["cur", "new", "tmp", LOCK_FILE])
    assert sorted(os.listdir(tmp_path)) == outside


# 12. Crash during deletions


DELETER = """
import sys
from popsrv.store.maildir import MaildirMaildrop
maildrop = MaildirMaildrop(sys.argv[1], "victim")
maildrop.lock()
uids = {info.uid for info in maildrop.listMessages()}
print("ready", len(uids), flush=True)
maildrop.commit(uids, set())
print("done", flush=True)
sys.stdin.read()
"""


def test_killDuringDeletionsLeavesWholeMessagesAndNoLock(tmp_path, spawn):
    """
    SIGKILL during commit() leaves every message either intact or gone (never
    partial) and the maildrop unlocked.
    """
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    originals = {}
    for i in range(2000):
        content = b"Subject: message %d\r\n\r\nbody of message %d\r\n" % (i, i)
        name = f"{1000 + i}.M1P1.test,S={len(content)},W={len(content)}:2,"
        writeMessage(tmp_path / "cur", name, content)
        originals[name] = content
    deleter = spawn(DELETER, str(tmp_path))
    assert readLine(deleter) == b"ready 2000\n"
    deadline = time.monotonic() + POLL_DEADLINE
    while len(os.listdir(tmp_path / "cur")) == len(originals):
        assert deleter.poll() is None, deleter.stderr.read()
        assert time.monotonic() < deadline, "no message was ever deleted"
    killAndWait(deleter)
    remaining = os.listdir(tmp_path / "cur")
    assert set(remaining) <= set(originals)
    for name in remaining:
        assert (tmp_path / "cur" / name).read_bytes() == originals[name]
    assert os.listdir(tmp_path / "new") == []
    assert os.listdir(tmp_path / "tmp") == []
    maildrop = MaildirMaildrop(str(tmp_path), "x")
    maildrop.lock()
    infos = maildrop.listMessages()
    maildrop.release()
    assert sorted(info.uid for info in infos) == sorted(name.split(",")[0] for name in remaining)


# 13. Interfaces


def test_interfacesVerified(tmp_path):
    """
    MaildirMaildrop provides IMaildrop and MaildirRealm provides IRealm.
    """
    assert verifyObject(IMaildrop, MaildirMaildrop(str(tmp_path / "alice"), "alice"))
    assert verifyObject(IRealm, MaildirRealm(str(tmp_path)))


# Regressions


def lockedCollidingPair(tmp_path) -> MaildirMaildrop:
    """
    Return a locked maildrop of two messages whose names differ only in
    their size fields.
    """
    (tmp_path / "cur").mkdir()
    (tmp_path / "new").mkdir()
    writeMessage(tmp_path / "cur", "1000.dup,S=1,W=3:2,", b"a")
    writeMessage(tmp_path / "cur", "1000.dup,S=2,W=4:2,", b"ab")
    maildrop = MaildirMaildrop(str(tmp_path), "alice")
    maildrop.lock()
    return maildrop


def test_collidingUidsStableWhenFlagsChange(tmp_path):
    """
    Two messages whose base names differ only in size fields keep distinct
    uids that do not change when one is marked seen.
    """
    maildrop = lockedCollidingPair(tmp_path)
    before = [info.uid for info in maildrop.listMessages()]
    assert len(set(before)) == 2
    maildrop.commit(frozenset(), frozenset(before))
    maildrop.release()
    assert [info.uid for info in listOnce(tmp_path)] == before


def test_directoryInCurDoesNotBreakListing(tmp_path):
    """
    A stray subdirectory in cur/ is not a message and does not stop the
    messages next to it from being listed.
    """
    name = deliver(str(tmp_path), b"Subject: ok\n\nbody\n")
    (tmp_path / "cur" / "stray").mkdir()
    (tmp_path / "new" / "stray").mkdir()
    assert [info.uid for info in listOnce(tmp_path)] == [name]


def test_symlinksAreNotMessages(tmp_path):
    """
    A symbolic link in cur/ or new/ is never served: a user who can write
    to the Maildir cannot make the server read files outside it.
    """
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:secret-hash\n")
    maildir = tmp_path / "alice"
    name = deliver(str(maildir), b"Subject: ok\n\nbody\n")
    os.symlink(secret, maildir / "cur" / "1.M1P1.evil:2,")
    os.symlink(secret, maildir / "new" / "2.M1P1.evil")
    assert [info.uid for info in listOnce(maildir)] == [name]


def test_messagesNumberedInDeliveryOrder(tmp_path):
    """
    Messages delivered within the same second are numbered in the order they
    were delivered.
    """
    names = [deliver(str(tmp_path), b"Subject: %d\n\n" % i) for i in range(50)]
    assert [info.uid for info in listOnce(tmp_path)] == names


def test_survivorOfACollisionNeverTakesADeletedUid(tmp_path):
    """
    When one of two messages that would share a uid is deleted, the other
    never shows the deleted message's uid (a client would skip it).
    """
    maildrop = lockedCollidingPair(tmp_path)
    first, second = maildrop.listMessages()
    maildrop.commit(frozenset([first.uid]), frozenset())
    maildrop.release()
    [survivor] = listOnce(tmp_path)
    assert survivor.uid != first.uid
    assert survivor.size == 4


def test_symlinkedSubdirectoryRefused(tmp_path):
    """
    A Maildir whose cur/ is a symbolic link (to another user's mail) is not
    served.
    """
    from popsrv.errors import MaildropError

    deliver(str(tmp_path / "bob"), b"Subject: bob's\n\nprivate\n")
    (tmp_path / "alice").mkdir()
    os.symlink(tmp_path / "bob" / "cur", tmp_path / "alice" / "cur")
    with pytest.raises(MaildropError, match="not a directory"):
        MaildirMaildrop(str(tmp_path / "alice"), "alice").lock()


def test_blockingWorkGoesThroughTheRunner(tmp_path):
    """
    Listing with new mail to measure, or a large cur/, and committing many
    files go through the realm's runner (the service gives a thread pool
    runner); small work is done at once.
    """
    from popsrv.store.maildir.maildrop import QUICK_COMMIT_FILES, QUICK_DIRECTORY_SIZE

    calls = []

    def runner(function, *args):
        calls.append(function.__name__)
        return defer.succeed(function(*args))

    def session(actions):
        maildrop = MaildirRealm(str(tmp_path), runner=runner).maildropFor("alice")
        maildrop.lock()
        snapshot = []
        result = maildrop.listMessages()
        if isinstance(result, defer.Deferred):
            result.addCallback(snapshot.extend)
        else:
            snapshot.extend(result)
        actions(maildrop, snapshot)
        maildrop.release()
        return snapshot

    count = QUICK_COMMIT_FILES + 1
    for n in range(count):
        deliver(str(tmp_path / "alice"), b"Subject: %d\n\nbody\n" % n)
    session(lambda maildrop, snapshot: maildrop.commit(frozenset(), frozenset(m.uid for m in snapshot[:2])))
    assert calls == ["_snapshot"]
    calls.clear()
    session(lambda maildrop, snapshot: maildrop.commit(frozenset(m.uid for m in snapshot), frozenset()))
    assert calls == ["_apply"]
    assert not hasMessages(str(tmp_path / "alice"))
    calls.clear()
    for n in range(3000):
        (tmp_path / "alice" / "cur" / f"{n}.M{n}P1.a-rather-long-host-name.example.com,S=9,W=10:2,").write_bytes(b"x\n")
    assert os.stat(tmp_path / "alice" / "cur").st_size > QUICK_DIRECTORY_SIZE
    session(lambda maildrop, snapshot: None)
    assert calls == ["_snapshot"]


def test_threadRunnerUsesTheReactorPool():
    """
    threadRunner runs work in the reactor's thread pool.
    """
    from twisted.internet.testing import MemoryReactor
    from twisted.python.threadpool import ThreadPool

    from popsrv.threads import threadRunner

    class Pool(ThreadPool):
        def callInThreadWithCallback(self, onResult, func, *args, **kw):
            onResult(True, func(*args, **kw))

    class Reactor(MemoryReactor):
        def getThreadPool(self):
            return Pool()

        def callFromThread(self, f, *args, **kw):
            f(*args, **kw)

    results = []
    threadRunner(Reactor())(lambda a, b: a + b, 2, 3).addCallback(results.append)
    assert results == [5]


def test_quickListingNeverMeasuresNewMail(tmp_path, monkeypatch):
    """
    When listing is done at once (new/ was empty), mail that lands in new/
    just then is left for the next session instead of being measured on
    the calling thread.
    """
    from popsrv.store.maildir import intake

    deliver(str(tmp_path), b"Subject: old\n\nbody\n")
    listOnce(tmp_path)
    maildrop = MaildirMaildrop(str(tmp_path), "alice", runner=lambda f, *a: pytest.fail("not quick"))
    maildrop.lock()
    quick = maildrop._quickToList
    late = []

    def deliverAfterTheCheck():
        answer = quick()
        late.append(deliver(str(tmp_path), b"Subject: late\n\nbody\n"))
        return answer

    monkeypatch.setattr(maildrop, "_quickToList", deliverAfterTheCheck)
    monkeypatch.setattr(intake, "measure", lambda *a: pytest.fail("measured on the calling thread"))
    assert len(maildrop.listMessages()) == 1
    maildrop.release()
    assert os.listdir(tmp_path / "new") == late


def test_commitRemovesMessagesWhoseFlagsChangedOrThatAreGone(tmp_path):
    """
    commit() removes a message under the new name another program gave it
    (new flags) after the snapshot, and takes a message already removed by
    another program as removed.
    """
    for n in range(3):
        deliver(str(tmp_path), b"Subject: %d\n\nbody\n" % n)
    maildrop = MaildirMaildrop(str(tmp_path), "alice")
    maildrop.lock()
    snapshot = maildrop.listMessages()
    first, second, third = sorted(curNames(tmp_path))
    os.rename(tmp_path / "cur" / first, tmp_path / "cur" / (first + "F"))
    os.unlink(tmp_path / "cur" / second)
    maildrop.commit(frozenset(info.uid for info in snapshot[:2]), frozenset())
    maildrop.release()
    assert curNames(tmp_path) == [third]
