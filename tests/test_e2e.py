"""
End-to-end tests: the real popsrv, started by twistd as an operator would,
driven over real TCP by Python's poplib, curl and raw sockets.
"""

from __future__ import annotations

import hashlib
import os
import poplib
import random
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Set

import pytest

from popsrv.app.demo import MESSAGES
from popsrv.store.maildir import deliver, uidFor
from tests.support.servers import LISTEN_LOCAL, Popsrv, writePasswordFile
from tests.support.wire import SOCKET_TIMEOUT, RawClient, dotStuffed, topWire, wire

if TYPE_CHECKING:
    from tests.support.servers import Launcher

CURL = shutil.which("curl") or "/usr/bin/curl"
CURL_TIMEOUT = 60.0
AUTH_FAILED = b"-ERR [AUTH] invalid user name or password\r\n"


def poplibMessage(lines: List[bytes]) -> bytes:
    """
    Rebuild the (un-dot-stuffed) wire form from the lines poplib returns.
    """
    return b"\r\n".join(lines) + b"\r\n"


def bigMessage(size: int = 20 * 1024 * 1024) -> bytes:
    """
    A 20 MiB message of lines of many lengths, with LF and CRLF line ends
    and lines that start with dots.
    """
    rng = random.Random(1939)
    parts = [b"From: big@example.org\nSubject: twenty megabytes\r\n\n"]
    total = len(parts[0])
    number = 0
    while total < size:
        number += 1
        text = b"%07d " % number + b"x" * rng.randrange(0, 150)
        if number % 5 == 0:
            text = b"." + text
        if number % 97 == 0:
            text = b"."
        text += b"\r\n" if number % 3 == 0 else b"\n"
        parts.append(text)
        total += len(text)
    message = b"".join(parts)[:size]
    return message if message.endswith(b"\n") else message[:-1] + b"\n"


CORPUS: Dict[str, bytes] = {
    "dots": (
        b"From: dots@example.org\r\nSubject: dots\r\n\r\n"
        b".leading dot\r\n..two dots\r\n.\r\n...\r\nnot a dot .\r\n. space\r\n.\r\n"
    ),
    "bare-lf": b"From: lf@example.org\nSubject: bare LF\n\nfirst\nsecond\n\nfourth after a blank line\n",
    "crlf": b"From: crlf@example.org\r\nSubject: CRLF\r\n\r\nfirst\r\nsecond\r\n",
    "mixed-and-lone-cr": b"Subject: mixed\r\n\nLF line\ncarriage\rreturn inside\r\nCRLF line\r\n",
    "no-final-newline": b"From: n@example.org\r\nSubject: no final newline\r\n\r\nbody\r\nlast line without newline",
    "eight-bit": (
        "From: =?utf-8?q?Jos=C3=A9?= <jose@example.org>\nSubject: 8-bit\n"
        "Content-Type: text/plain; charset=utf-8\n\nGrüße, Привет, 你好 ✓\n"
    ).encode()
    + b"raw \xff\xfe\x80 octets\n\xff at the start of a line\n",
    "long-line": b"Subject: a 2000-character line\r\n\r\n" + b"0123456789" * 200 + b"\r\n."
    + b"z" * 1999 + b"\r\n",
    "empty-body": b"From: e@example.org\r\nSubject: empty body\r\n\r\n",
    "20MB": bigMessage(),
}


# Clients


def curl(*args: str, timeout: float = CURL_TIMEOUT) -> bytes:
    """
    Run curl silently and return what it wrote to stdout; it must succeed.
    """
    result = subprocess.run(
        [CURL, "-s", "-S", "--max-time", str(int(timeout)), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout + 10,
    )
    assert result.returncode == 0, f"curl {args} failed ({result.returncode}): {result.stderr!r}"
    return result.stdout


def login(server: Popsrv, user: str = "alice", password: Optional[str] = None) -> poplib.POP3:
    """
    Connect with poplib and log in with USER/PASS.
    """
    client = poplib.POP3(server.host, server.port, timeout=SOCKET_TIMEOUT)
    try:
        client.user(user)
        client.pass_(server.users[user] if password is None else password)
    except BaseException:
        client.close()
        raise
    return client


def uidListing(client: poplib.POP3) -> Dict[int, str]:
    """
    UIDL, as message number to uid.
    """
    _, lines, _ = client.uidl()
    pairs = (line.split() for line in lines)
    return {int(number): uid.decode("ascii") for number, uid in pairs}


def sizeListing(client: poplib.POP3) -> Dict[int, int]:
    """
    LIST, as message number to size.
    """
    _, lines, _ = client.list()
    pairs = (line.split() for line in lines)
    return {int(number): int(size) for number, size in pairs}


def currentUids(server: Popsrv, user: str = "alice") -> Dict[int, str]:
    """
    Log in, list the uids, and quit.
    """
    client = login(server, user)
    try:
        return uidListing(client)
    finally:
        client.quit()


def filesUnder(directory: Path, *excluded: Path) -> Set[str]:
    """
    Every file and directory below a directory, except those below
    C{excluded} directories, as relative paths.
    """
    found = set()
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [name for name in dirnames if Path(dirpath, name) not in excluded]
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), directory))
    return found


def sessionEnded(server: Popsrv, port: int, reason: str, since: int = 0) -> None:
    """
    Wait until the server logged the end of the session from a client port.
    """
    server.twistd.waitFor(
        rf"session of alice from 127\.0\.0\.1:{port} ended \({re.escape(reason)}\)", timeout=10, since=since
    )


# 1, 2: the command line


def test_twistd_help_lists_popsrv_and_its_options(launcher: Launcher, tmp_path: Path) -> None:
    """twistd --help lists the popsrv plugin, and twistd popsrv --help documents its options."""
    listing = launcher.run(["--help"], tmp_path)
    assert listing.returncode == 0, listing.stdout
    assert re.search(rb"^\s+popsrv\s+A POP3 server", listing.stdout, re.M), listing.stdout.decode()

    help = launcher.run(["popsrv", "--help"], tmp_path)
    assert help.returncode == 0, help.stdout
    text = help.stdout.decode()
    for option in ("--listen", "--maildir-root", "--maildir", "--auth", "--hostname", "--timeout", "--demo"):
        assert re.search(rf"^\s+(-\w, )?{option}(=|\s)", text, re.M), f"{option} missing from:\n{text}"


def test_start_without_users_fails_with_a_clear_message(launcher: Launcher, tmp_path: Path) -> None:
    """twistd -n popsrv without --auth or --demo exits at once with an error naming both."""
    started = time.monotonic()
    result = launcher.run(["-n", "--pidfile=", "--logfile=-", "popsrv", "--listen", launcher.listen], tmp_path)
    elapsed = time.monotonic() - started
    text = result.stdout.decode("utf-8", "replace")
    assert result.returncode != 0, text
    assert elapsed < 15, f"took {elapsed:.1f}s to refuse to start"
    assert "--auth" in text and "--demo" in text, text
    assert "Traceback" not in text, text
    assert "popsrv listening" not in text, text
    assert os.listdir(tmp_path) == []


# 3: byte-exact retrieval


class Corpus:
    """
    A server whose user alice has the messages of L{CORPUS}.
    """

    def __init__(self, server: Popsrv, uids: Dict[str, str]) -> None:
        self.server = server
        self.uids = uids
        self.stored = {uids[name]: CORPUS[name] for name in CORPUS}
        self.numbers = {uid: number for number, uid in currentUids(server).items()}


@pytest.fixture(scope="module")
def corpus(moduleLauncher: Launcher) -> Corpus:
    """
    A running popsrv whose user alice has every message of L{CORPUS},
    delivered into her Maildir as an MDA would.
    """
    server = moduleLauncher.popsrv()
    uids = {name: uidFor(deliver(server.maildir(), message)) for name, message in CORPUS.items()}
    return Corpus(server, uids)


def test_poplib_fetches_every_message_byte_exact(corpus: Corpus) -> None:
    """STAT, LIST, UIDL, RETR, TOP and DELE through poplib match the stored messages octet for octet."""
    client = login(corpus.server)
    try:
        uids = uidListing(client)
        assert sorted(uids.values()) == sorted(corpus.stored)
        assert sorted(uids) == list(range(1, len(CORPUS) + 1))

        sizes = sizeListing(client)
        assert sizes == {number: len(wire(corpus.stored[uid])) for number, uid in uids.items()}
        assert client.stat() == (len(CORPUS), sum(sizes.values()))

        for number, uid in uids.items():
            stored = corpus.stored[uid]
            assert client.list(number) == b"+OK %d %d" % (number, len(wire(stored)))
            assert client.uidl(number) == b"+OK %d %s" % (number, uid.encode())
            response, lines, _ = client.retr(number)
            assert response == b"+OK %d octets" % len(wire(stored))
            got = poplibMessage(lines)
            assert got == wire(stored), f"RETR {number} ({uid}) differs"
            for bodyLines in (0, 1, 2):
                _, lines, _ = client.top(number, bodyLines)
                assert poplibMessage(lines) == topWire(stored, bodyLines), f"TOP {number} {bodyLines}"

        first, last = min(uids), max(uids)
        assert client.dele(first).startswith(b"+OK")
        assert client.stat() == (len(CORPUS) - 1, sum(sizes.values()) - sizes[first])
        with pytest.raises(poplib.error_proto):
            client.retr(first)
        assert first not in sizeListing(client) and last in sizeListing(client)
        client.rset()
        assert client.stat() == (len(CORPUS), sum(sizes.values()))
    finally:
        client.quit()
    assert currentUids(corpus.server) == uids


@pytest.mark.parametrize("name", list(CORPUS))
def test_curl_retrieves_message_byte_exact(corpus: Corpus, name: str) -> None:
    """curl pop3://HOST:PORT/N writes message N exactly as its wire form, un-dot-stuffed."""
    number = corpus.numbers[corpus.uids[name]]
    got = curl(corpus.server.url(str(number)), "-u", "alice:secret")
    expected = wire(CORPUS[name])
    assert len(got) == len(expected)
    assert got == expected


def test_curl_list_matches_the_messages(corpus: Corpus) -> None:
    """curl pop3://HOST:PORT/ writes the LIST lines, with each message's wire size."""
    got = curl(corpus.server.url(), "-u", "alice:secret")
    expected = b"".join(
        b"%d %d\r\n" % (number, len(wire(corpus.stored[uid])))
        for uid, number in sorted(corpus.numbers.items(), key=lambda item: item[1])
    )
    assert got == expected


def test_curl_uidl_matches_poplib(corpus: Corpus) -> None:
    """curl -X UIDL writes the same uids, in the same order, as poplib's uidl()."""
    got = curl(corpus.server.url(), "-u", "alice:secret", "-X", "UIDL")
    listing = sorted(currentUids(corpus.server).items())
    expected = b"".join(b"%d %s\r\n" % (number, uid.encode()) for number, uid in listing)
    assert got == expected
    assert sorted(line.split()[1].decode() for line in got.splitlines()) == sorted(corpus.stored)


# 4: deletion


def deliverSome(server: Popsrv, count: int, user: str = "alice") -> Dict[str, bytes]:
    """
    Deliver C{count} small messages; return them by uid.
    """
    delivered = {}
    for index in range(count):
        message = b"Subject: message %d\r\n\r\nbody %d\r\n.dot\r\n" % (index, index)
        delivered[uidFor(deliver(server.maildir(user), message))] = message
    return delivered


def test_dele_then_quit_removes_the_message(server: Popsrv) -> None:
    """DELE 1 then QUIT removes message 1 for good: a new session no longer sees it."""
    delivered = deliverSome(server, 3)
    client = login(server)
    before = uidListing(client)
    assert sorted(before.values()) == sorted(delivered)
    client.dele(1)
    assert client.quit().startswith(b"+OK")

    after = currentUids(server)
    assert sorted(after.values()) == sorted(uid for number, uid in before.items() if number != 1)
    assert before[1] not in after.values()
    remaining = os.listdir(os.path.join(server.maildir(), "cur")) + os.listdir(os.path.join(server.maildir(), "new"))
    assert len(remaining) == 2
    assert not any(name.startswith(before[1] + ",") or name.startswith(before[1] + ":") for name in remaining)


def test_dele_then_dropped_connection_deletes_nothing(server: Popsrv) -> None:
    """DELE then closing the socket without QUIT deletes nothing."""
    delivered = deliverSome(server, 3)
    with RawClient(server.port) as client:
        assert client.readLine().startswith(b"+OK")
        assert client.command(b"USER alice").startswith(b"+OK")
        assert client.command(b"PASS secret").startswith(b"+OK alice has 3 messages")
        assert client.command(b"DELE 1").startswith(b"+OK")
        assert client.command(b"DELE 2").startswith(b"+OK")
        assert client.command(b"STAT").startswith(b"+OK 1 ")
        port = client.localPort
    sessionEnded(server, port, "connection lost")

    uids = currentUids(server)
    assert sorted(uids.values()) == sorted(delivered)


# 5: the maildrop lock


def test_second_login_while_locked_gets_in_use(server: Popsrv) -> None:
    """While alice is logged in, another login as alice fails with [IN-USE]; after QUIT it works."""
    delivered = deliverSome(server, 1)
    first = login(server)
    second = poplib.POP3(server.host, server.port, timeout=SOCKET_TIMEOUT)
    try:
        second.user("alice")
        with pytest.raises(poplib.error_proto) as refused:
            second.pass_("secret")
        assert b"[IN-USE]" in refused.value.args[0]
        assert first.stat() == (1, len(wire(next(iter(delivered.values())))))
        assert first.quit().startswith(b"+OK")

        second.user("alice")
        assert second.pass_("secret").startswith(b"+OK alice has 1 message")
        assert second.quit().startswith(b"+OK")
    finally:
        first.close()
        second.close()
    third = login(server)
    assert third.stat()[0] == 1
    third.quit()


# 6: new mail during a session


def test_mail_delivered_during_a_session_appears_in_the_next(server: Popsrv) -> None:
    """Mail delivered during a session is not in that session's STAT/LIST, and is in the next one."""
    old = deliverSome(server, 2)
    client = login(server)
    try:
        stat = client.stat()
        sizes = sizeListing(client)
        assert stat == (2, sum(len(wire(message)) for message in old.values()))
        newMessage = b"Subject: late\n\narrived during the session\n"
        newUid = uidFor(deliver(server.maildir(), newMessage))
        assert client.stat() == stat
        assert sizeListing(client) == sizes
        assert newUid not in uidListing(client).values()
        with pytest.raises(poplib.error_proto):
            client.retr(3)
    finally:
        client.quit()

    client = login(server)
    try:
        assert client.stat() == (3, stat[1] + len(wire(newMessage)))
        uids = uidListing(client)
        assert newUid in uids.values()
        numberOfNew = next(number for number, uid in uids.items() if uid == newUid)
        assert poplibMessage(client.retr(numberOfNew)[1]) == wire(newMessage)
    finally:
        client.quit()


# 7, 8: hostile names and failed logins


HOSTILE_NAMES = ["../etc", "a/b", ".."]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_user_names_are_refused_without_touching_files(launcher: Launcher, tmp_path: Path, name: str) -> None:
    """USER ../etc, a/b or .. fails with [AUTH] even with the right password, and creates no file."""
    users = {"alice": "secret", name: "letmein"}
    root = tmp_path / "deep" / "er" / "mail"
    root.mkdir(parents=True)
    server = launcher.popsrv(users=users, root=root)
    deliverSome(server, 1)
    before = filesUnder(tmp_path, root / "alice")

    with RawClient(server.port) as client:
        assert client.readLine().startswith(b"+OK")
        for password in (b"wrong", b"letmein"):
            assert client.command(b"USER " + name.encode()).startswith(b"+OK")
            assert client.command(b"PASS " + password) == AUTH_FAILED
        assert client.command(b"USER alice").startswith(b"+OK")
        assert client.command(b"PASS secret").startswith(b"+OK alice has 1 message")
        assert client.command(b"QUIT").startswith(b"+OK")
        assert client.readUntilClosed() == b""
        port = client.localPort

    # With the right password the checker accepts the name: the realm is what
    # refuses it (the checker's own refusal is logged as UnauthorizedLogin).
    failure = rf"login failed for {re.escape(name)} from 127\.0\.0\.1:{port} with USER/PASS: (?!UnauthorizedLogin$)"
    server.twistd.waitFor(failure)
    assert filesUnder(tmp_path, root / "alice") == before
    assert sorted(os.listdir(root)) == ["alice"]
    login(server).quit()


def test_wrong_password_and_unknown_user_look_the_same(server: Popsrv) -> None:
    """A wrong password and an unknown user get byte-identical replies; the third failure closes."""
    with RawClient(server.port) as client:
        assert client.readLine().startswith(b"+OK")
        userReplies = []
        passReplies = []
        for user, password in ((b"alice", b"wrong"), (b"nobody", b"secret")):
            userReplies.append(client.command(b"USER " + user))
            passReplies.append(client.command(b"PASS " + password))
        assert userReplies[0] == userReplies[1]
        assert passReplies[0] == passReplies[1] == AUTH_FAILED

        assert client.command(b"USER bob").startswith(b"+OK")
        third = client.command(b"PASS secret")
        assert third.startswith(b"-ERR [AUTH]"), third
        assert client.readUntilClosed() == b""


# 9: idle timeout


def test_idle_session_is_closed_after_timeout(launcher: Launcher) -> None:
    """With --timeout 1, an idle connection is closed by the server, and an idle session deletes nothing."""
    server = launcher.popsrv("--timeout", "1")
    delivered = deliverSome(server, 2)
    with RawClient(server.port, timeout=10) as greeted, RawClient(server.port, timeout=10) as session:
        started = time.monotonic()
        assert greeted.readLine().startswith(b"+OK")
        assert session.readLine().startswith(b"+OK")
        assert session.command(b"USER alice").startswith(b"+OK")
        assert session.command(b"PASS secret").startswith(b"+OK")
        assert session.command(b"DELE 1").startswith(b"+OK")
        assert greeted.readUntilClosed() == b""
        assert session.readUntilClosed() == b""
        assert time.monotonic() - started >= 0.9
        sessionEnded(server, session.localPort, "idle timeout")
    assert sorted(currentUids(server).values()) == sorted(delivered)


# 10: the demo


def test_demo_prints_a_working_curl_command(launcher: Launcher, tmp_path: Path) -> None:
    """twistd -n popsrv --demo prints a curl command that fetches the demo's first message."""
    cwd = tmp_path / "demo"
    cwd.mkdir()
    process = launcher.twistd(["--demo", "--listen", launcher.listen], cwd)
    port = process.waitListening()
    announced = process.waitFor(r"curl pop3://127\.0\.0\.1:(\d+)/1 -u demo:\S+")
    assert int(announced.group(1)) == port
    command = shlex.split(announced.group(0))
    result = subprocess.run(command, cwd=str(cwd), stdin=subprocess.DEVNULL, capture_output=True, timeout=CURL_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == wire(MESSAGES[0])
    assert (cwd / "popsrv-demo").is_dir()
    assert (cwd / "popsrv-demo" / "mail" / "demo").is_dir()


# Message numbering


MAILDIR_NAME = re.compile(r"(\d+)\.M(\d+)P")


def deliveryOrder(name: str):
    """
    The real delivery order of Maildir names C{<sec>.M<usec>P...}: second,
    microsecond, then name.
    """
    match = MAILDIR_NAME.match(name)
    assert match, name
    return (int(match.group(1)), int(match.group(2)), name)


def deliverNamed(maildir: str, name: str, message: bytes) -> None:
    """
    Deliver a message as an MDA that names files itself does: write it in
    C{tmp/}, then rename it into C{new/}.
    """
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    with open(os.path.join(maildir, "tmp", name), "xb") as f:
        f.write(message)
    os.rename(os.path.join(maildir, "tmp", name), os.path.join(maildir, "new", name))


def test_messages_delivered_in_the_same_second_are_numbered_in_delivery_order(server: Popsrv) -> None:
    """Two messages an MDA delivered 3 microseconds apart are numbered in delivery order."""
    earlier = "1700000000.M99998P4242.mx.example.org"
    later = "1700000000.M100001P4242.mx.example.org"
    assert deliveryOrder(earlier) < deliveryOrder(later)
    deliverNamed(server.maildir(), earlier, b"Subject: earlier\n\ndelivered first\n")
    deliverNamed(server.maildir(), later, b"Subject: later\n\ndelivered second\n")
    assert currentUids(server) == {1: earlier, 2: later}


# 11: pipelining


def test_pipelined_commands_get_complete_replies_in_order(server: Popsrv) -> None:
    """200 STATs, LIST, RETR and QUIT sent in one write get complete replies, in order."""
    # Both are larger than the chunks popsrv reads messages in (256 KiB), so
    # RETR 1 is streamed in several steps while the commands after it wait.
    messages = [
        b"Subject: pipelined\r\n\r\n.dot line\r\n" + b"body line\n.dot\r\n" * 20000 + b".\r\nend",
        b"Subject: second\n\n..second body\n" + b"second body line\r\n" * 20000,
    ]
    stored = {uidFor(deliver(server.maildir(), message)): message for message in messages}
    numbers = currentUids(server)
    sizes = {number: len(wire(stored[uid])) for number, uid in numbers.items()}
    total = sum(sizes.values())

    with RawClient(server.port) as raw:
        assert raw.readLine().startswith(b"+OK")
        raw.sock.sendall(
            b"USER alice\r\nPASS secret\r\n" + b"STAT\r\n" * 200 + b"LIST\r\n" + b"RETR 1\r\n" + b"QUIT\r\n"
        )
        data = raw.readUntilClosed()

    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"+OK")
    assert lines[1] == b"+OK alice has 2 messages (%d octets)" % total
    stats = lines[2:202]
    assert stats == [b"+OK 2 %d" % total] * 200
    rest = data.split(b"\r\n", 202)[202]
    listing = b"+OK 2 messages (%d octets)\r\n" % total + b"".join(
        b"%d %d\r\n" % item for item in sorted(sizes.items())
    ) + b".\r\n"
    assert rest.startswith(listing), rest[:200]
    rest = rest[len(listing):]
    retr = b"+OK %d octets\r\n" % sizes[1] + dotStuffed(wire(stored[numbers[1]])) + b".\r\n"
    assert rest.startswith(retr), rest[:200]
    rest = rest[len(retr):]
    assert re.fullmatch(rb"\+OK popsrv signing off[^\r\n]*\r\n", rest), rest


# 12: virtual hosting


class VirtualHosts:
    """
    A popsrv serving Maildirs at C{vmail/%d/%n}, with users
    C{alice@example.com}, C{bob@Example.ORG} (a domain written in capitals,
    whose Maildir is under C{example.org}) and C{carol} (no domain).
    """

    users = {"alice@example.com": "secret", "bob@Example.ORG": "hunter2", "carol": "pw"}

    def __init__(self, launcher: Launcher, base: Path) -> None:
        base.mkdir()
        self.vmail = base / "vmail"
        self.alice = self.vmail / "example.com" / "alice"
        self.bob = self.vmail / "example.org" / "bob"
        self.stored = {
            "alice": [CORPUS["dots"], CORPUS["bare-lf"], CORPUS["eight-bit"]],
            "bob": [CORPUS["crlf"]],
        }
        for message in self.stored["alice"]:
            deliver(str(self.alice), message)
        for message in self.stored["bob"]:
            deliver(str(self.bob), message)
        passwords = writePasswordFile(base / "passwd", self.users)
        process = launcher.twistd(
            ["--listen", LISTEN_LOCAL, "--maildir", f"{self.vmail}/%d/%n", "--auth", f"file:{passwords}"], base,
        )
        self.server = Popsrv(process, self.vmail, self.users, process.waitListening())


@pytest.fixture
def virtualHosts(launcher: Launcher, tmp_path: Path) -> VirtualHosts:
    """
    A running popsrv with --maildir vmail/%d/%n.
    """
    return VirtualHosts(launcher, tmp_path / "vhosts")


def test_virtual_hosting_poplib_and_curl_fetch_byte_exact(virtualHosts: VirtualHosts) -> None:
    """With --maildir vmail/%d/%n, alice@example.com gets vmail/example.com/alice over poplib and curl."""
    server = virtualHosts.server
    stored = virtualHosts.stored["alice"]
    client = login(server, "alice@example.com")
    try:
        assert client.stat() == (3, sum(len(wire(message)) for message in stored))
        fetched = sorted(poplibMessage(client.retr(number)[1]) for number in (1, 2, 3))
    finally:
        client.quit()
    assert fetched == sorted(wire(message) for message in stored)

    byCurl = sorted(curl(server.url(str(number)), "-u", "alice@example.com:secret") for number in (1, 2, 3))
    assert byCurl == fetched
    # In a URL the @ of the login is escaped as %40.
    escaped = f"pop3://alice%40example.com:secret@{server.host}:{server.port}/"
    assert curl(escaped + "1") == curl(server.url("1"), "-u", "alice@example.com:secret")
    listing = curl(escaped).decode("ascii").split()
    assert listing[0::2] == ["1", "2", "3"]
    assert sorted(map(int, listing[1::2])) == sorted(len(wire(message)) for message in stored)
    server.twistd.waitFor(r"alice@example\.com logged in from 127\.0\.0\.1:\d+ with USER/PASS")


def test_virtual_hosting_domain_case_and_missing_domain(virtualHosts: VirtualHosts) -> None:
    """bob@Example.ORG reads vmail/example.org/bob and is named bob@example.org; carol (no domain) cannot log in."""
    server = virtualHosts.server
    before = filesUnder(virtualHosts.vmail, virtualHosts.alice, virtualHosts.bob)
    with RawClient(server.port) as client:
        assert client.readLine().startswith(b"+OK")
        assert client.command(b"USER carol").startswith(b"+OK")
        assert client.command(b"PASS pw") == AUTH_FAILED
        assert client.command(b"USER bob@Example.ORG").startswith(b"+OK")
        expected = len(wire(virtualHosts.stored["bob"][0]))
        assert client.command(b"PASS hunter2") == b"+OK bob@example.org has 1 message (%d octets)\r\n" % expected
        assert client.command(b"QUIT").startswith(b"+OK")
        assert client.readUntilClosed() == b""
    server.twistd.waitFor(r"login failed for carol from 127\.0\.0\.1:\d+ with USER/PASS: .*no @domain.*%d")
    assert curl(server.url("1"), "-u", "bob@Example.ORG:hunter2") == wire(virtualHosts.stored["bob"][0])
    assert sorted(os.listdir(virtualHosts.vmail)) == ["example.com", "example.org"]
    assert os.listdir(virtualHosts.vmail / "example.org") == ["bob"]
    assert filesUnder(virtualHosts.vmail, virtualHosts.alice, virtualHosts.bob) == before


@pytest.mark.parametrize("workers", [1, 2])
def test_apop_challenge_session_ids_and_logout_counters(launcher: Launcher, workers: int) -> None:
    """
    The greeting's APOP challenge has qpopper's shape, and APOP logs in with
    it; the connect and session-end lines of a session share its id, and
    the session-end line gives Dovecot's logout counters (in one process
    and with workers).
    """
    server = launcher.popsrv("--workers", str(workers))
    for index in range(workers if workers > 1 else 0):
        server.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    maildir = server.maildir("alice")
    deliver(maildir, b"Subject: one\r\n\r\nfirst\r\n")
    deliver(maildir, b"Subject: two\r\n\r\nsecond\r\n")
    mark = server.twistd.mark()
    client = poplib.POP3("127.0.0.1", server.port, timeout=30)
    try:
        challenge = re.fullmatch(rb"\+OK popsrv ready (<\d{1,29}\.\d+@[^>]+>)", client.getwelcome())
        assert challenge is not None
        digest = hashlib.md5(challenge.group(1) + b"secret").hexdigest()
        assert client._shortcmd(f"APOP alice {digest}").startswith(b"+OK alice has 2 messages")
        client.top(2, 0)
        client.retr(1)
        client.dele(1)
    finally:
        client.quit()
    connect = server.twistd.waitFor(r"connection from 127\.0\.0\.1:(\d+) \[session ([-\w]+)\]", since=mark)
    end = server.twistd.waitFor(
        r"session of alice from 127\.0\.0\.1:(\d+) ended \(quit\): top 1, retrieved 1 messages \(23 octets\), "
        r"deleted 1 \(23 octets\), maildrop 2/47 -> 1/24, [\d.]+s \[session ([-\w]+)\]", since=mark,
    )
    assert connect.group(1) == end.group(1) and connect.group(2) == end.group(2)
