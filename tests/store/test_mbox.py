"""
Tests of the mbox store (L{popsrv.store.mbox.MboxMaildrop}) and its realm
(L{popsrv.store.realm.MboxRealm}) on real temporary spools: snapshots,
retrieval, deletion while mail arrives and other programs rewrite the
spool, uids, seen marks, the session lock across processes, and spools
that are not regular files.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

import popsrv
from popsrv.errors import MaildropError, MaildropLocked, MaildropUnusable, MessageVanished
from popsrv.interfaces import IMaildrop
from popsrv.messages import MessageInfo
from popsrv.store.mbox import MboxMaildrop, deliver
from popsrv.store.mbox.delivery import fromLine, quote
from popsrv.store.mbox.parsing import MAX_MESSAGES
from popsrv.store.realm import BadMaildirTemplate, BadPathTemplate, MaildirTemplate, MboxRealm, PathTemplate
from popsrv.testing import connect
from tests.store.test_maildir import RecordingConsumer, killAndWait, readLine, spawn  # noqa: F401
from tests.support.wire import wire

# Helpers


MESSAGES = [
    b"From: a@example.org\nSubject: one\n\nFrom the start of a line\n>From quoted already\n",
    b"From: b@example.org\r\nSubject: two\r\n\r\nCRLF body\r\n\r\n",
    b"From: c@example.org\nSubject: three\nStatus: RO\n\nread before\n",
    b"From: d@example.org\nSubject: four\n\nno final newline",
    b"Subject: five\n\n.leading dot\n\nFrom after a blank line\n",
]


def sent(message: bytes) -> bytes:
    """
    What the store gives back for a delivered message: the message itself
    (quoted by deliver, unquoted on the way out), with a line end added if
    it had none.
    """
    return message if message.endswith(b"\n") else message + b"\n"


def makeSpool(path: Path, messages: List[bytes] = MESSAGES) -> None:
    """
    Deliver messages into a spool as a delivery agent does.
    """
    for number, message in enumerate(messages):
        deliver(str(path), message, sender=f"sender{number}@example.org", when=1_700_000_000 + number)


def maildropFor(tmp_path: Path, runner=None, **kwargs) -> MboxMaildrop:
    """
    The maildrop of the spool C{tmp_path/mail/alice}, state in
    C{tmp_path/state}.
    """
    return MboxMaildrop(str(tmp_path / "mail" / "alice"), "alice", str(tmp_path / "state"), runner=runner,
                        trusted=str(tmp_path / "mail"), **kwargs)


def spoolPath(tmp_path: Path) -> Path:
    (tmp_path / "mail").mkdir(exist_ok=True)
    return tmp_path / "mail" / "alice"


def session(tmp_path: Path) -> MboxMaildrop:
    """
    A locked maildrop with its snapshot taken.
    """
    maildrop = maildropFor(tmp_path)
    maildrop.lock()
    maildrop.listMessages()
    return maildrop


def listOnce(tmp_path: Path) -> List[MessageInfo]:
    """
    One session's snapshot.
    """
    maildrop = maildropFor(tmp_path)
    maildrop.lock()
    try:
        return list(maildrop.listMessages())  # type: ignore[arg-type]
    finally:
        maildrop.release()


def retrieve(maildrop: MboxMaildrop, uid: str) -> bytes:
    """
    sendMessage into a recording consumer; the octets sent.
    """
    consumer = RecordingConsumer()
    results: list = []
    maildrop.sendMessage(uid, consumer).addBoth(results.append)
    assert results == [None], results
    assert consumer.registrations == consumer.unregistrations == 1
    return b"".join(consumer.writes)


def failure(deferred: defer.Deferred) -> BaseException:
    """
    The exception a Deferred that already fired failed with.
    """
    results: list = []
    deferred.addErrback(results.append)
    assert len(results) == 1, "it did not fail"
    return results[0].value


# Snapshots and retrieval


def test_interfacesVerified(tmp_path: Path) -> None:
    """The maildrop provides IMaildrop and the realm IRealm."""
    assert verifyObject(IMaildrop, maildropFor(tmp_path))
    assert verifyObject(IRealm, MboxRealm("/var/mail/%u", str(tmp_path)))


@pytest.mark.parametrize("make", ["nothing", "directory", "empty"])
def test_missingOrEmptySpoolIsAnEmptyMaildrop(tmp_path: Path, make: str) -> None:
    """No spool directory, no spool, an empty spool: an empty maildrop, not an error; nothing is made."""
    if make != "nothing":
        spoolPath(tmp_path)
    if make == "empty":
        spoolPath(tmp_path).write_bytes(b"")
    maildrop = maildropFor(tmp_path)
    maildrop.lock()
    assert list(maildrop.listMessages()) == []  # type: ignore[arg-type]
    maildrop.commit(frozenset(), frozenset())
    maildrop.release()
    assert os.path.exists(spoolPath(tmp_path)) == (make == "empty")


def test_sizesAreWhatRetrSends(tmp_path: Path) -> None:
    """
    Each message's size is the octets RETR sends (CRLF line ends, before
    dot-stuffing); RETR sends the message as delivered, unquoted.
    """
    makeSpool(spoolPath(tmp_path))
    maildrop = session(tmp_path)
    try:
        messages = list(maildrop.listMessages())  # type: ignore[arg-type]
        assert [info.size for info in messages] == [len(wire(sent(m))) for m in MESSAGES]
        for info, message in zip(messages, MESSAGES):
            assert retrieve(maildrop, info.uid) == sent(message)
        assert [info.seen for info in messages] == [False, False, True, False, False]
    finally:
        maildrop.release()


def test_bigMessageThroughATemporaryFile(tmp_path: Path) -> None:
    """A message of several megabytes is read into a file of the state directory, and sent whole."""
    big = b"Subject: big\n\n" + b"".join(b"line %07d From x\n" % n for n in range(200_000))
    makeSpool(spoolPath(tmp_path), [big])
    maildrop = session(tmp_path)
    try:
        info = list(maildrop.listMessages())[0]  # type: ignore[arg-type]
        assert info.size == len(wire(big))
        assert retrieve(maildrop, info.uid) == big
    finally:
        maildrop.release()


def test_uidsStableAcrossSessionsDeletionsAndNewMail(tmp_path: Path) -> None:
    """
    A message's uid is the same in every session, after other messages are
    deleted and new ones arrive, and after a restart (a new maildrop).
    """
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    before = {info.uid: number for number, info in enumerate(listOnce(tmp_path))}
    assert len(before) == len(MESSAGES)
    uids = list(before)
    maildrop = session(tmp_path)
    maildrop.commit(frozenset([uids[0], uids[2]]), frozenset())
    maildrop.release()
    deliver(str(spool), b"Subject: new\n\nnew\n")
    after = [info.uid for info in listOnce(tmp_path)]
    assert after[:3] == [uids[1], uids[3], uids[4]]
    assert len(after) == 4 and after[3] not in uids


def test_xUidlIsTheUidWhenValidAndUnique(tmp_path: Path) -> None:
    """
    qpopper's X-UIDL is the uid when valid and unique; a duplicate (even
    one forged by a later sender) or an invalid one falls back to the
    content-derived uid, for every message that carries it.
    """
    spool = spoolPath(tmp_path)
    makeSpool(spool, [
        b"X-UIDL: 3f1a2b\nSubject: qpopper's\n\none\n",
        b"X-UIDL: bad value\nSubject: invalid\n\ntwo\n",
        b"X-UIDL: 99aa\nSubject: first claim\n\nthree\n",
    ])
    first = [info.uid for info in listOnce(tmp_path)]
    assert first[0] == "3f1a2b" and first[2] == "99aa"
    assert len(first[1]) == 32
    deliver(str(spool), b"X-UIDL: 99aa\nSubject: forged copy\n\nfour\n")
    deliver(str(spool), b"X-UIDL: " + first[1].encode() + b"\nSubject: forged derived\n\nfive\n")
    second = [info.uid for info in listOnce(tmp_path)]
    assert second[0] == "3f1a2b" and second[1] == first[1]
    assert "99aa" not in second and len(set(second)) == 5
    assert second[4] != first[1]


def test_identicalCopiesGetDistinctUidsAndOneIsDeleted(tmp_path: Path) -> None:
    """Two byte-identical messages have two uids; deleting one leaves exactly one copy."""
    spool = spoolPath(tmp_path)
    copy = b"Subject: same\n\nsame\n"
    for _ in range(2):
        deliver(str(spool), copy, when=1_700_000_000)
    uids = [info.uid for info in listOnce(tmp_path)]
    assert len(set(uids)) == 2
    maildrop = session(tmp_path)
    maildrop.commit(frozenset([uids[1]]), frozenset())
    maildrop.release()
    assert [info.uid for info in listOnce(tmp_path)] == [uids[0]]
    assert spool.read_bytes() == fromLine("MAILER-DAEMON", 1_700_000_000) + copy + b"\n"


# Deletion


def test_deletionKeepsMailDeliveredDuringTheSession(tmp_path: Path) -> None:
    """
    DELE then QUIT removes exactly the deleted messages; mail appended
    during the session is kept, and every remaining octet is as it was.
    """
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    original = spool.read_bytes()
    maildrop = session(tmp_path)
    messages = list(maildrop.listMessages())  # type: ignore[arg-type]
    late = deliver(str(spool), b"Subject: late\n\narrived during the session\n")
    appended = spool.read_bytes()[late:]
    maildrop.commit(frozenset([messages[1].uid, messages[3].uid]), frozenset())
    maildrop.release()
    starts = [original.index(fromLine(f"sender{n}@example.org", 1_700_000_000 + n)) for n in range(len(MESSAGES))]
    starts.append(len(original))
    kept = b"".join(original[starts[n]:starts[n + 1]] for n in (0, 2, 4))
    assert spool.read_bytes() == kept + appended
    after = [info.uid for info in listOnce(tmp_path)]
    assert after[:3] == [messages[n].uid for n in (0, 2, 4)] and len(after) == 4


def test_deletionFindsMessagesAnotherProgramMoved(tmp_path: Path) -> None:
    """
    Another program rewrote the spool during the session (removed a
    message, changed a Status header): QUIT removes the deleted messages by
    uid and content, not by their old offsets, and says which were gone.
    """
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    maildrop = session(tmp_path)
    messages = list(maildrop.listMessages())  # type: ignore[arg-type]
    data = spool.read_bytes()
    first = data.index(b"From sender1@")
    second = data.index(b"From sender2@")
    rewritten = data[:first] + data[second:].replace(b"Subject: five\n", b"Status: RO\nSubject: five\n")
    spool.write_bytes(rewritten)
    with capturedLogs() as events:
        maildrop.commit(frozenset([messages[1].uid, messages[4].uid]), frozenset())
    maildrop.release()
    assert [info.uid for info in listOnce(tmp_path)] == [messages[n].uid for n in (0, 2, 3)]
    assert [event["count"] for event in events if event.get("event") == "mbox-already-removed"] == [1]


def test_retrieveFindsAMessageAnotherProgramMoved(tmp_path: Path) -> None:
    """RETR of a message that another program moved finds it; one it removed is gone; one it changed is refused."""
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    maildrop = session(tmp_path)
    try:
        messages = list(maildrop.listMessages())  # type: ignore[arg-type]
        data = spool.read_bytes()
        first, second = data.index(b"From sender1@"), data.index(b"From sender2@")
        third = data.index(b"From sender3@")
        spool.write_bytes(data[:first] + data[second:third].replace(b"Status: RO", b"Status: O ")
                          + data[third:].replace(b"Subject: five", b"Subject: 5ive"))
        assert retrieve(maildrop, messages[3].uid) == sent(MESSAGES[3])
        assert retrieve(maildrop, messages[0].uid) == sent(MESSAGES[0])
        assert isinstance(failure(maildrop.sendMessage(messages[1].uid, RecordingConsumer())), MessageVanished)
        assert isinstance(failure(maildrop.sendMessage(messages[4].uid, RecordingConsumer())), MessageVanished)
        assert retrieve(maildrop, messages[2].uid) == sent(MESSAGES[2]).replace(b"Status: RO", b"Status: O ")
        spool.write_bytes(spool.read_bytes().replace(b"Status: O ", b"Status: RO\nX-Status: A"))
        changed = failure(maildrop.sendMessage(messages[2].uid, RecordingConsumer()))
        assert type(changed) is MaildropError
    finally:
        maildrop.release()


def test_unknownUidIsGone(tmp_path: Path) -> None:
    """sendMessage of a uid not in the snapshot fails with MessageVanished, before any producer."""
    makeSpool(spoolPath(tmp_path))
    maildrop = session(tmp_path)
    try:
        consumer = RecordingConsumer()
        assert isinstance(failure(maildrop.sendMessage("nope", consumer)), MessageVanished)
        assert consumer.registrations == 0
    finally:
        maildrop.release()


def test_spoolReplacedByAnotherFileDuringTheSession(tmp_path: Path) -> None:
    """A spool another program replaced (a new inode) is the one QUIT rewrites."""
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    maildrop = session(tmp_path)
    messages = list(maildrop.listMessages())  # type: ignore[arg-type]
    replacement = tmp_path / "mail" / "alice.new"
    replacement.write_bytes(spool.read_bytes())
    os.replace(replacement, spool)
    maildrop.commit(frozenset([messages[0].uid]), frozenset())
    maildrop.release()
    assert [info.uid for info in listOnce(tmp_path)] == [info.uid for info in messages[1:]]


# Seen marks (LAST)


def test_seenPersistsAcrossSessionsAndIsPruned(tmp_path: Path) -> None:
    """
    A message is seen if its Status says R, or an earlier session retrieved
    it (recorded in the state directory, never in the spool); the record
    keeps only messages still there.
    """
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    original = spool.read_bytes()
    messages = listOnce(tmp_path)
    assert [info.seen for info in messages] == [False, False, True, False, False]
    maildrop = session(tmp_path)
    maildrop.commit(frozenset(), frozenset([messages[0].uid, messages[3].uid]))
    maildrop.release()
    assert spool.read_bytes() == original
    assert [info.seen for info in listOnce(tmp_path)] == [True, False, True, True, False]
    maildrop = session(tmp_path)
    maildrop.commit(frozenset([messages[3].uid]), frozenset())
    maildrop.release()
    assert [info.seen for info in listOnce(tmp_path)] == [True, False, True, False]
    records = list((tmp_path / "state" / "mbox").glob("*.seen"))
    assert len(records) == 1
    assert records[0].read_bytes().splitlines()[1:] == [messages[0].uid.encode()]


def test_lastThroughThePOP3Protocol(tmp_path: Path) -> None:
    """Through the real protocol in memory: RETR, QUIT, and LAST in the next session; TOP; UIDL."""
    makeSpool(spoolPath(tmp_path))
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice", b"secret")
    portal = Portal(MboxRealm(str(tmp_path / "mail" / "%u"), str(tmp_path / "state")), [checker])
    client = connect(portal)
    assert client.login("alice", "secret").startswith("+OK alice has 5 messages")
    assert client.command("LAST").startswith("+OK 3 ")
    assert client.retrieve(4) == wire(sent(MESSAGES[3]))
    assert client.multiline("TOP 1 1")[-1] == b"From the start of a line"
    assert client.quit().startswith("+OK")
    client = connect(portal)
    client.login("alice", "secret")
    assert client.command("LAST").startswith("+OK 4 ")
    assert len(client.multiline("UIDL")) == 5
    client.quit()


# The session lock


def test_secondSessionIsInUse(tmp_path: Path) -> None:
    """A second session on the same spool in this process gets MaildropLocked; after release it works."""
    makeSpool(spoolPath(tmp_path))
    first = session(tmp_path)
    second = maildropFor(tmp_path)
    with pytest.raises(MaildropLocked):
        second.lock()
    first.release()
    second.lock()
    second.release()


HOLDER = """
import sys
from popsrv.store.mbox import MboxMaildrop
maildrop = MboxMaildrop(sys.argv[1], "alice", sys.argv[2])
maildrop.lock()
maildrop.listMessages()
print("locked", flush=True)
sys.stdin.read()
"""


def test_sessionLockAcrossProcessesNeverHoldsUpDelivery(tmp_path: Path, spawn) -> None:  # noqa: F811
    """
    A session in another process makes this one MaildropLocked, while
    delivery goes on (the spool's own locks are free); killing that process
    frees the session lock.
    """
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    holder = spawn(HOLDER, str(spool), str(tmp_path / "state"))
    assert readLine(holder) == b"locked\n"
    with pytest.raises(MaildropLocked):
        maildropFor(tmp_path).lock()
    deliver(str(spool), b"Subject: during\n\nstill delivered\n")
    killAndWait(holder)
    assert len(listOnce(tmp_path)) == len(MESSAGES) + 1


def test_sessionLockIsInTheStateDirectory(tmp_path: Path) -> None:
    """Nothing of popsrv's is left next to the spool; its files are in the state directory, named by a hash."""
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    maildrop = session(tmp_path)
    messages = list(maildrop.listMessages())  # type: ignore[arg-type]
    maildrop.commit(frozenset([messages[0].uid]), frozenset([messages[1].uid]))
    maildrop.release()
    assert os.listdir(tmp_path / "mail") == ["alice"]
    names = sorted(os.listdir(tmp_path / "state" / "mbox"))
    assert [name.split(".")[1] for name in names] == ["lock", "seen"]
    assert (tmp_path / "state" / "mbox" / names[0]).read_bytes() == os.fsencode(spool) + b"\n"


# Spools and directories that are not what they should be


def makeFifo(path: Path) -> None:
    os.mkfifo(path)


def makeDirectory(path: Path) -> None:
    path.mkdir()


def makeLink(path: Path) -> None:
    other = path.parent.parent / "bob"
    makeSpool(other)
    path.symlink_to(other)


def makeHardLink(path: Path) -> None:
    other = path.parent.parent / "bob"
    makeSpool(other)
    os.link(other, path)


def makeDevice(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this process may not make device nodes")


@pytest.mark.parametrize("make", [makeFifo, makeDirectory, makeLink, makeHardLink, makeDevice])
def test_spoolsThatAreNotRegularFilesAreRefused(tmp_path: Path, make) -> None:
    """
    A spool that is a FIFO, a directory, a symbolic link, a hard link to
    another file or a device is refused (MaildropUnusable, event
    mbox-unusable) without blocking and without reading it.
    """
    make(spoolPath(tmp_path))
    maildrop = maildropFor(tmp_path)
    with capturedLogs() as events:
        with pytest.raises(MaildropUnusable):
            maildrop.lock()
    assert [event["path"] for event in events if event.get("event") == "mbox-unusable"] == [
        str(spoolPath(tmp_path))
    ]
    maildrop.release()
    # The session lock was given up.
    other = maildropFor(tmp_path)
    with pytest.raises(MaildropUnusable):
        other.lock()


def test_theBaseDirectoryMayBeALink(tmp_path: Path) -> None:
    """
    The template's fixed part is the operator's: with /var/mail/%u, /var/mail
    may be a link (to /var/spool/mail), and its spools are served.
    """
    real = tmp_path / "spool" / "mail"
    real.mkdir(parents=True)
    makeSpool(real / "alice")
    (tmp_path / "mail").symlink_to(real)
    realm = MboxRealm(str(tmp_path / "mail" / "%u"), str(tmp_path / "state"))
    maildrop = realm.maildropFor("alice")
    maildrop.lock()
    assert len(maildrop.listMessages()) == len(MESSAGES)  # type: ignore[arg-type]
    maildrop.release()


def test_symlinkedDirectoryOnTheWayIsRefused(tmp_path: Path) -> None:
    """
    With a template /base/%u/mbox, a user's directory that is a symbolic
    link (to another user's) is refused; the base itself may be a link.
    """
    real = tmp_path / "real"
    (real / "bob").mkdir(parents=True)
    makeSpool(real / "bob" / "mbox")
    (tmp_path / "base").symlink_to(real)
    (real / "alice").symlink_to(real / "bob")
    realm = MboxRealm(str(tmp_path / "base" / "%u" / "mbox"), str(tmp_path / "state"))
    with pytest.raises(MaildropUnusable):
        realm.maildropFor("alice").lock()
    bob = realm.maildropFor("bob")
    bob.lock()
    assert len(bob.listMessages()) == len(MESSAGES)  # type: ignore[arg-type]
    bob.release()


# The runner and the realm


def test_blockingWorkGoesThroughTheRunner(tmp_path: Path) -> None:
    """Opening, reading the spool, reading a message and rewriting all go through the runner."""
    calls = []

    def runner(function, *args):
        calls.append(function.__name__)
        return defer.succeed(function(*args))

    makeSpool(spoolPath(tmp_path))
    maildrop = maildropFor(tmp_path, runner=runner)
    maildrop.lock()
    snapshot: list = []
    maildrop.listMessages().addCallback(snapshot.extend)  # type: ignore[union-attr]
    retrieve(maildrop, snapshot[0].uid)
    maildrop.commit(frozenset([snapshot[0].uid]), frozenset())
    maildrop.release()
    assert calls == ["opening", "snapshot", "read", "commit"]


def test_realmTemplates(tmp_path: Path) -> None:
    """
    The realm fills an mbox template as --maildir's are; hostile names are
    refused; the old template names are the same classes.
    """
    assert MaildirTemplate is PathTemplate and BadMaildirTemplate is BadPathTemplate
    realm = MboxRealm(str(tmp_path / "%d" / "%n"), str(tmp_path / "state"))
    assert realm.maildropFor("alice@Example.ORG").path == str(tmp_path / "example.org" / "alice")
    assert realm.maildropFor("alice@Example.ORG").name == "alice@example.org"
    with pytest.raises(BadPathTemplate, match="mbox template .* needs %u or %n, so that users get their own mbox"):
        MboxRealm("/var/mail/x", str(tmp_path))
    from popsrv.names import UnsafeMailboxName

    for name in ("../etc", "a/b", "..", ".hidden"):
        with pytest.raises(UnsafeMailboxName):
            realm.maildropFor(name)


def test_quotingRoundTrip() -> None:
    """What deliver writes, the store gives back (mboxrd: every >*From line gains a >)."""
    assert quote(b"From a\n>From b\nx From c\n") == b">From a\n>>From b\nx From c\n"


def test_aSpoolOfTooManyMessagesIsServedItsFirstOnes(tmp_path: Path) -> None:
    """
    A spool of more messages than a session takes (MAX_MESSAGES: tiny ones
    cost little to write but as much as any to list) is served its first
    MAX_MESSAGES, logged mbox-too-many (also by a login that goes on from
    the kept scan); deleting one keeps every octet after them, and the next
    login has the next message.
    """
    spool = spoolPath(tmp_path)
    messages = [b"From %d\nx\n\n" % number for number in range(MAX_MESSAGES + 2)]
    spool.write_bytes(b"".join(messages))
    with capturedLogs() as events:
        listed = listOnce(tmp_path)
        maildrop = maildropFor(tmp_path)
        maildrop.lock()
        assert list(maildrop.listMessages()) == listed  # type: ignore[arg-type]
    assert len(listed) == MAX_MESSAGES
    assert [(event["limit"], event["path"]) for event in events if event.get("event") == "mbox-too-many"] == [
        (MAX_MESSAGES, str(spool))
    ] * 2
    assert retrieve(maildrop, listed[-1].uid) == b"x\n"
    maildrop.commit({listed[0].uid}, set())
    maildrop.release()
    assert spool.read_bytes() == b"".join(messages[1:])
    after = listOnce(tmp_path)
    assert [info.uid for info in after[:-1]] == [info.uid for info in listed[1:]]
    assert len(after) == MAX_MESSAGES and after[-1].uid not in {info.uid for info in listed}


DELIVER_LIMITED = """
import resource, signal, sys
from popsrv.store.mbox import deliver
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    deliver(sys.argv[1], b"Subject: big\\n\\n" + b"x" * 100000 + b"\\n")
except OSError as error:
    print(error.errno)
"""


def test_aDeliveryThatDoesNotFitLeavesTheSpoolAsItWas(tmp_path: Path) -> None:
    """
    deliver, when the spool cannot grow by the whole message (a full disk:
    here, a limit on the size of files), fails and leaves the spool as it
    was, never with part of a message at its end.
    """
    spool = spoolPath(tmp_path)
    makeSpool(spool)
    before = spool.read_bytes()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(popsrv.__file__)))
    result = subprocess.run([sys.executable, "-c", DELIVER_LIMITED, str(spool), str(len(before) + 500)],
                            env=env, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.strip() == b"%d" % errno.EFBIG
    assert spool.read_bytes() == before
