"""
End-to-end tests of C{--mbox}: the real popsrv under twistd, in one process
and with C{--workers 2}, serving mbox spools that the real procmail
delivers to (with its own dotlock and C{fcntl} locking, before, during and
between sessions), fetched by poplib, curl and fetchmail.
"""

from __future__ import annotations

import os
import poplib
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Set, Tuple

import pytest

from popsrv.store.mbox import deliver
from popsrv.store.mbox.locking import MAX_WAITING
from popsrv.store.mbox.parsing import scanSpool
from popsrv.store.mbox.state import SpoolState
from tests.app.test_workers import waitUntil, workerPids
from tests.support.wire import SOCKET_TIMEOUT, RawClient, topWire, wire
from tests.test_clients import FETCHMAIL_NO_MAIL, fetchmail, filesIn, lfForm, pki, startTLSServer, transcript
from tests.test_e2e import curl, login, sizeListing, uidListing

if TYPE_CHECKING:
    from tests.support.certificates import TestPKI
    from tests.support.servers import Launcher, Popsrv

__all__ = ["pki"]

PROCMAIL_TIMEOUT = 60.0

# Messages as procmail gets them from an MTA: it writes the separator
# line, quotes From lines, and adds the blank line after each.
CORPUS: Dict[str, bytes] = {
    "dots": b"From: dots@example.org\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\n...\r\n",
    "bare-lf": b"From: lf@example.org\nSubject: bare LF\n\nfirst\n\nafter a blank line\n",
    "from-lines": (b"From: f@example.org\nSubject: From lines\n\nFrom the start of a line\n\n"
                   b"From after a blank line\nx From inside\n"),
    "lone-cr": b"Subject: lone CR\r\n\nLF line\ncarriage\rreturn\r\nCRLF line\r\n",
    "eight-bit": ("From: =?utf-8?q?Jos=C3=A9?= <jose@example.org>\nSubject: Grüße\n"
                  "Content-Type: text/plain; charset=utf-8\n\nПривет, 你好 ✓\n").encode() + b"\xff\xfe raw\n",
    "long-line": b"Subject: a 2000-character line\n\n" + b"0123456789" * 200 + b"\n",
    "status-read": b"From: s@example.org\nSubject: read locally\nStatus: RO\n\nalready read\n",
    "big": b"Subject: two megabytes\n\n" + b"".join(b"%07d %s\n" % (n, b"y" * (n % 90)) for n in range(40000)),
    "empty-body": b"From: e@example.org\nSubject: empty body\n\n",
    "no-final-newline": b"From: n@example.org\nSubject: last, without a final newline\n\nlast line",
}


def procmailDeliver(spool: Path, message: bytes, sender: str = "sender@example.org") -> None:
    """
    Deliver a message to a spool with the real procmail, as an MTA runs it
    (it locks the spool with a dotlock, then fcntl, and waits for locks
    others hold, trying again every second).
    """
    procmail = shutil.which("procmail")
    if procmail is None:
        pytest.fail("procmail is not installed (apt-get install procmail)")
    rc = spool.parent.parent / "procmailrc"
    rc.write_text(f"LOCKSLEEP=1\nDEFAULT={spool}\n")
    subprocess.run([procmail, "-f", sender, "-m", str(rc)], input=message, check=True, timeout=PROCMAIL_TIMEOUT)


def readBack(message: bytes) -> bytes:
    """
    A message as a reader of the spool gets it back: procmail adds the blank
    line that ends a message in a spool only if the message does not end
    with one already, and that blank line is the format's, not the
    message's (as for every reader of mbox).
    """
    return message[:-1] if message.endswith(b"\n\n") else message


def deliverCorpus(spool: Path) -> List[bytes]:
    """
    Deliver every message of the corpus (the one without a final newline
    last: procmail adds no blank line after such a message); return them in
    order, as they are read back.
    """
    for message in CORPUS.values():
        procmailDeliver(spool, message)
    return [readBack(message) for message in CORPUS.values()]


def spoolOf(server: Popsrv, user: str = "alice") -> Path:
    return Path(server.maildir(user))


def messageRanges(data: bytes, tmp_path: Path) -> List[Tuple[int, int]]:
    """
    Where each message of a spool's octets starts and where what follows
    it starts.
    """
    path = tmp_path / "ranges"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        scan = scanSpool(fd)
    finally:
        os.close(fd)
    return [(scan.starts[n], scan.nextStart(n)) for n in range(len(scan))]


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def mboxServer(request: pytest.FixtureRequest, launcher: Launcher) -> Popsrv:
    """
    popsrv serving spools (C{--mbox ROOT/%u}), in one process or with two
    workers.
    """
    workers = request.param
    server = launcher.popsrv("--workers", str(workers), mbox=True)
    for index in range(workers if workers > 1 else 0):
        server.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    server.workers = workers  # type: ignore[attr-defined]
    return server


def test_procmailDeliveriesAreRetrievedByteExact(mboxServer: Popsrv) -> None:
    """
    Mail procmail delivered: STAT, LIST, UIDL, RETR and TOP through
    poplib (after UTF8) and RETR and LIST through curl give each message
    octet for octet; LAST counts the one Status marks read.
    """
    messages = deliverCorpus(spoolOf(mboxServer))
    client = poplib.POP3(mboxServer.host, mboxServer.port, timeout=SOCKET_TIMEOUT)
    try:
        assert client.utf8().startswith(b"+OK")
        client.user("alice")
        client.pass_("secret")
        sizes = sizeListing(client)
        assert sizes == {number: len(wire(m)) for number, m in enumerate(messages, 1)}
        assert client.stat() == (len(messages), sum(sizes.values()))
        uids = uidListing(client)
        assert len(set(uids.values())) == len(messages)
        assert client._shortcmd("LAST").startswith(b"+OK 7 ")
        for number, message in enumerate(messages, 1):
            response, lines, _ = client.retr(number)
            assert response == b"+OK %d octets" % len(wire(message))
            assert b"".join(line + b"\r\n" for line in lines) == wire(message), f"RETR {number}"
            for bodyLines in (0, 2):
                _, lines, _ = client.top(number, bodyLines)
                assert b"".join(line + b"\r\n" for line in lines) == topWire(message, bodyLines)
    finally:
        client.quit()
    for number, message in enumerate(messages, 1):
        assert curl(mboxServer.url(str(number)), "-u", "alice:secret") == wire(message)
    listing = curl(mboxServer.url(), "-u", "alice:secret")
    assert listing == b"".join(b"%d %d\r\n" % (number, len(wire(m))) for number, m in enumerate(messages, 1))


def test_deletionWhileProcmailDelivers(mboxServer: Popsrv, tmp_path: Path) -> None:
    """
    DELE and QUIT while procmail delivers (between login and DELE, and
    between DELE and QUIT): the deleted messages are gone, every other
    octet of the spool is as it was, the new mail is there once, and the
    next session has the old messages' uids.
    """
    spool = spoolOf(mboxServer)
    for number in range(4):
        procmailDeliver(spool, b"Subject: old %d\n\nFrom the body of %d\n" % (number, number))
    original = spool.read_bytes()
    ranges = messageRanges(original, tmp_path)
    client = login(mboxServer)
    try:
        uids = uidListing(client)
        procmailDeliver(spool, b"Subject: during the session\n\nfirst\n")
        assert client.dele(1).startswith(b"+OK") and client.dele(3).startswith(b"+OK")
        procmailDeliver(spool, b"Subject: between DELE and QUIT\n\nsecond\n")
        appended = spool.read_bytes()[len(original):]
        assert client.stat()[0] == 2
    finally:
        assert client.quit().startswith(b"+OK")
    kept = b"".join(original[start:end] for number, (start, end) in enumerate(ranges) if number not in (0, 2))
    assert spool.read_bytes() == kept + appended
    client = login(mboxServer)
    try:
        after = uidListing(client)
        assert [after[1], after[2]] == [uids[2], uids[4]]
        assert len(after) == 4
        assert b"".join(line + b"\r\n" for line in client.retr(3)[1]) == wire(b"Subject: during the session\n\nfirst\n")
    finally:
        client.quit()


def test_aSecondSessionIsInUse(mboxServer: Popsrv) -> None:
    """
    While a session is open, a second login (in the other worker, with
    workers) gets [IN-USE]; procmail still delivers meanwhile; after QUIT
    the next login works and has the new mail.
    """
    spool = spoolOf(mboxServer)
    procmailDeliver(spool, b"Subject: one\n\nbody\n")
    pids = workerPids(mboxServer, 2) if mboxServer.workers > 1 else {}  # type: ignore[attr-defined]
    mark = mboxServer.twistd.mark()
    first = login(mboxServer)
    stopped = None
    if pids:
        holder = int(mboxServer.twistd.waitFor(r"worker (\d+)\] alice logged in", since=mark).group(1))
        stopped = pids[holder]
        os.kill(stopped, signal.SIGSTOP)
    try:
        procmailDeliver(spool, b"Subject: two\n\ndelivered during a session\n")
        second = poplib.POP3(mboxServer.host, mboxServer.port, timeout=SOCKET_TIMEOUT)
        second.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_("secret")
        second.close()
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
    assert first.stat()[0] == 1
    first.quit()
    third = login(mboxServer)
    assert third.stat()[0] == 2
    third.quit()


def test_uidsAndLastSurviveARestart(launcher: Launcher, mboxServer: Popsrv, tmp_path: Path) -> None:
    """
    UIDL is the same after new mail, deletions and a restart of popsrv (a
    message qpopper gave an X-UIDL keeps it); a message retrieved in one
    session is seen (LAST) in the next ones, also after the restart, while
    the spool itself is never changed for it.
    """
    spool = spoolOf(mboxServer)
    for number in range(2):
        procmailDeliver(spool, b"Subject: %d\n\nbody %d\n" % (number, number))
    procmailDeliver(spool, b"X-UIDL: 3e1d3c6a00000042\nSubject: from qpopper's days\n\nbody\n")
    delivered = spool.read_bytes()
    before = currentListing(mboxServer)
    assert before[3] == "3e1d3c6a00000042"
    client = login(mboxServer)
    client.retr(2)
    client.quit()
    assert spool.read_bytes() == delivered
    client = login(mboxServer)
    assert client._shortcmd("LAST").startswith(b"+OK 2 ")
    client.dele(1)
    client.quit()
    assert spool.read_bytes() == delivered[messageRanges(delivered, tmp_path)[1][0]:]
    procmailDeliver(spool, b"Subject: new\n\nnew\n")
    mboxServer.twistd.stop()
    workers = str(mboxServer.workers)  # type: ignore[attr-defined]
    restarted = launcher.popsrv("--workers", workers, root=mboxServer.root, mbox=True)
    for index in range(2 if workers == "2" else 0):
        restarted.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    after = currentListing(restarted)
    assert [after[1], after[2]] == [before[2], before[3]] and len(after) == 3
    client = login(restarted)
    assert client._shortcmd("LAST").startswith(b"+OK 1 ")
    client.quit()


def currentListing(server: Popsrv) -> Dict[int, str]:
    client = login(server)
    try:
        return uidListing(client)
    finally:
        client.quit()


def test_aSpoolThatIsASymbolicLinkIsRefused(mboxServer: Popsrv) -> None:
    """
    alice's spool a symbolic link to bob's: her login fails with
    [SYS/PERM], bob's mail is not served to her, and the operator sees
    event mbox-unusable.
    """
    procmailDeliver(spoolOf(mboxServer, "bob"), b"Subject: bob's\n\nprivate\n")
    spoolOf(mboxServer).symlink_to(spoolOf(mboxServer, "bob"))
    client = poplib.POP3(mboxServer.host, mboxServer.port, timeout=SOCKET_TIMEOUT)
    client.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\]"):
        client.pass_("secret")
    client.close()
    mboxServer.twistd.waitFor(rf"cannot serve the spool {spoolOf(mboxServer)}: .* not a regular file")


def heldFlocks() -> Set[int]:
    """
    The inodes of the files a C{flock} is held on now, in any process (from
    C{/proc/locks}, without taking or testing one).
    """
    inodes = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK":
            inodes.add(int(fields[5].split(":")[2]))
    return inodes


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_spoolLocksNeverHeldForeverHoldUpOtherLogins(
    launcher: Launcher, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int,
) -> None:
    """
    Many users whose dotlocks are directories another user made (in a
    /var/mail anyone may write to; popsrv never removes one) log in at
    once: a few logins wait for the locks, the others fail at once with
    [SYS/TEMP] (event mbox-lock-busy), and alice's login, whose spool is
    free, is not held up behind them for the whole wait (20 s) in the
    reactor's thread pool.  Once the directories are gone, the logins that
    waited get their mail.
    """
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    locked = [f"user{number}" for number in range(14)]
    users = {"alice": "secret", **{user: "pw-" + user for user in locked}}
    server = launcher.popsrv("--workers", str(workers), "--max-connections-per-ip", "40", users=users, mbox=True)
    for index in range(workers if workers > 1 else 0):
        server.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    for user in ["alice", *locked]:
        deliver(server.maildir(user), b"Subject: for %s\n\nbody\n" % user.encode())
    for user in locked:
        os.mkdir(server.maildir(user) + ".lock")
    replies: Dict[str, bytes] = {}

    def logIn(user: str) -> None:
        with RawClient(server.port) as client:
            client.readLine()
            client.command(b"USER " + user.encode())
            reply = client.command(b"PASS " + users[user].encode())
            replies[user] = reply
            if reply.startswith(b"+OK"):
                client.command(b"QUIT")

    threads = [threading.Thread(target=logIn, args=(user,), daemon=True) for user in locked]
    for thread in threads:
        thread.start()
    try:
        # Each locked login has failed, or holds its session lock (and waits
        # for the spool's locks, or is about to).
        sessionLocks = {user: Path(SpoolState(str(state), server.maildir(user)).path("lock")) for user in locked}

        def settled() -> bool:
            held = heldFlocks()
            return all(user in replies or (sessionLocks[user].exists() and sessionLocks[user].stat().st_ino in held)
                       for user in locked)

        waitUntil(settled, "every locked login waiting or refused")
        started = time.monotonic()
        client = login(server)
        took = time.monotonic() - started
        assert client.stat()[0] == 1
        client.quit()
        assert took < 5.0, f"alice waited {took:.1f} s behind the lock waits"
    finally:
        for user in locked:
            os.rmdir(server.maildir(user) + ".lock")
        for thread in threads:
            thread.join(SOCKET_TIMEOUT)
    refused = [user for user in locked if replies[user].startswith(b"-ERR")]
    assert all(replies[user].startswith(b"-ERR [SYS/TEMP]") for user in refused)
    assert len(refused) >= len(locked) - MAX_WAITING * workers
    assert all(replies[user].startswith(b"+OK") for user in locked if user not in refused)
    server.twistd.waitFor(r"is held by another program, and other threads wait for locks already")


def test_fetchmailKeepsAndThenFindsNothingNew(launcher: Launcher, pki: TestPKI, tmp_path: Path) -> None:
    """
    fetchmail over STLS with --keep delivers every message procmail
    delivered, octet for octet; a second run finds them all seen and takes
    none (the seen marks are popsrv's own: the spool is untouched).
    """
    server = startTLSServer(launcher, pki, "--workers", "2", mbox=True)
    user, password = server.account()
    spool = Path(server.server.maildir(user))
    messages = [CORPUS[name] for name in ("dots", "from-lines", "eight-bit", "bare-lf")]
    for message in messages:
        procmailDeliver(spool, message)
    before = spool.read_bytes()
    result, out = fetchmail(server, tmp_path, user, password, implicit=False, auth="password", keep=True,
                            fetchall=False)
    assert result.returncode == 0, transcript(result)
    assert filesIn(out) == sorted(lfForm(readBack(message)) for message in messages)
    again, _ = fetchmail(server, tmp_path, user, password, implicit=False, auth="password", keep=True,
                         fetchall=False)
    assert again.returncode == FETCHMAIL_NO_MAIL, transcript(again)
    assert "4 messages (4 seen)" in transcript(again)
    assert spool.read_bytes() == before
