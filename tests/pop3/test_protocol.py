"""
Unit tests of L{POP3Protocol}: every command in every state and every error
path, over a string transport with a fake clock.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from twisted.cred.checkers import FilePasswordDB, ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import LogLevel, capturedLogs
from zope.interface import implementer

from popsrv.errors import CredentialsUnavailable, MaildropError, MessageVanished
from popsrv.pop3.commands import COMMANDS, State
from popsrv.store.memory import MemoryMaildrop, MemoryRealm
from popsrv.wire.streaming import CHUNK_SIZE
from tests.support.session import Session, makePortal

MESSAGES = [
    b"Subject: one\r\n\r\nfirst body\r\n",
    b"Subject: two\n\n.starts with a dot\nbare LF\nno final newline",
    b"Subject: three\r\n\r\nline 1\r\nline 2\r\nline 3\r\n",
]


@pytest.fixture
def realm():
    realm = MemoryRealm()
    for message in MESSAGES:
        realm.maildrop("alice").add(message)
    return realm


@pytest.fixture
def session(realm):
    portal, _ = makePortal(realm=realm)
    return Session(portal)


@pytest.fixture
def loggedIn(session):
    assert session.login().startswith(b"+OK")
    return session


def wire(message: bytes) -> bytes:
    """
    The CRLF form of a stored message, before dot-stuffing.
    """
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


# Greeting and connection

def test_greetingCarriesAPOPChallenge(session):
    """
    The greeting is +OK with a <digits.time@host> challenge (qpopper's
    shape) made of A-Za-z0-9.@_+/- only.
    """
    match = re.fullmatch(rb"\+OK popsrv ready (<[A-Za-z0-9.@_+/-]+>)\r\n", session.greeting)
    assert match is not None
    assert match.group(1) == b"<1896.0@pop.example>"
    assert session.protocol.challenge == match.group(1)


def test_challengesAreUniqueAndUnpredictable(realm):
    """
    With the default random source, every connection gets a different
    challenge.
    """
    from popsrv.pop3 import POP3Factory

    portal, _ = makePortal(realm=realm)
    factory = POP3Factory(portal, hostname="bad host!<>", clock=Session(portal).clock)
    challenges = {factory.makeChallenge() for _ in range(200)}
    assert len(challenges) == 200
    for challenge in challenges:
        assert re.fullmatch(rb"<\d{1,29}\.\d+@badhost>", challenge)
    # 96 random bits: the first numbers spread over (nearly) all 29 digits.
    assert max(len(c.split(b".")[0]) for c in challenges) >= 28
    hostile = POP3Factory(portal, randomToken=lambda: "x<y>", clock=Session(portal).clock)
    assert hostile.makeChallenge().startswith(b"<0.")


def test_noDelayIsSet(session):
    """
    Nagle's algorithm is turned off on connect.
    """
    assert session.transport.noDelay is True


# AUTHORIZATION

def test_userPassLogin(session):
    """
    USER then PASS logs in and reports the maildrop's size.
    """
    assert session.send("USER alice") == b"+OK send your password\r\n"
    total = sum(len(wire(m)) for m in MESSAGES)
    assert session.send("PASS secret") == b"+OK alice has 3 messages (%d octets)\r\n" % total
    assert session.protocol.state is State.TRANSACTION


def test_passwordMayContainSpaces(realm):
    """
    PASS takes the rest of the line as the password.
    """
    portal, _ = makePortal({"alice": "two words "}, realm=realm)
    session = Session(portal)
    assert session.login("alice", "two words ").startswith(b"+OK alice has")


def test_commandsAreCaseInsensitive(session):
    """
    Commands work in any case.
    """
    assert session.send("user alice").startswith(b"+OK")
    assert session.send("pAsS secret").startswith(b"+OK")
    assert session.send("sTaT").startswith(b"+OK 3 ")


def test_wrongPasswordAndUnknownUserLookTheSame(session):
    """
    A wrong password and an unknown user get the very same reply.
    """
    session.send("USER alice")
    wrongPassword = session.send("PASS nope")
    session.send("USER mallory")
    unknownUser = session.send("PASS secret")
    assert wrongPassword == unknownUser == b"-ERR [AUTH] invalid user name or password\r\n"
    assert session.protocol.state is State.AUTHORIZATION


def test_userAlwaysSucceeds(session):
    """
    USER answers +OK for a user that does not exist.
    """
    assert session.send("USER nobody-here") == session.send("USER alice")


def test_threeFailuresClose(session):
    """
    The third failed login in a connection closes it.
    """
    for _ in range(3):
        assert not session.closed
        session.send("USER alice")
        reply = session.send("PASS wrong")
        assert reply.startswith(b"-ERR [AUTH]")
    assert session.closed


def test_passWithoutUser(session):
    """
    PASS before USER is an error that does not count as a failed login.
    """
    assert session.send("PASS secret") == b"-ERR give USER before PASS\r\n"
    assert session.login().startswith(b"+OK")


def test_nulInCredentialsFailsLogin(session):
    """
    A NUL inside the user name or the password fails the login; it is never
    cut short into another name.
    """
    session.send("USER alice\0evil")
    assert session.send("PASS secret").startswith(b"-ERR [AUTH]")
    session.send("USER alice")
    assert session.send("PASS secret\0more").startswith(b"-ERR [AUTH]")


def test_unsafeNameFailsLikeAWrongPassword():
    """
    A checker that accepts a name the realm cannot use still ends in the same
    [AUTH] failure.
    """
    from popsrv.store.realm import MaildirRealm

    portal, _ = makePortal({"../etc": "pw"})
    portal.realm = MaildirRealm("/nonexistent-popsrv-root")
    session = Session(portal)
    session.send("USER ../etc")
    assert session.send("PASS pw") == b"-ERR [AUTH] invalid user name or password\r\n"


def test_apop(session):
    """
    APOP with MD5(challenge + secret) logs in; a wrong digest fails.
    """
    challenge = session.protocol.challenge
    good = hashlib.md5(challenge + b"secret").hexdigest()
    bad = hashlib.md5(challenge + b"wrong").hexdigest()
    assert session.send(f"APOP alice {bad}").startswith(b"-ERR [AUTH]")
    assert session.send(f"APOP alice {good.upper()}").startswith(b"+OK alice has 3 messages")


def test_apopMalformedDigest(session):
    """
    A digest that is not 32 hex digits is a failed login.
    """
    assert session.send("APOP alice xyz").startswith(b"-ERR [AUTH]")
    assert session.send("APOP alice").startswith(b"-ERR Too few arguments")


def test_apopWithHashedSecretsFailsCleanly(tmp_path, realm):
    """
    A checker that keeps hashed secrets cannot verify APOP: APOP fails with
    [AUTH], no crash, and USER/PASS still works.
    """
    passwd = tmp_path / "passwd"
    passwd.write_bytes(b"alice:" + hashlib.sha256(b"secret").hexdigest().encode() + b"\n")

    def hashed(username, password, stored):
        return hashlib.sha256(password).hexdigest().encode()

    checker = FilePasswordDB(str(passwd), hash=hashed)
    session = Session(Portal(realm, [checker]))
    digest = hashlib.md5(session.protocol.challenge + b"secret").hexdigest()
    assert session.send(f"APOP alice {digest}") == b"-ERR [AUTH] invalid user name or password\r\n"
    assert session.login().startswith(b"+OK alice has 3")


def test_checkerFailureIsTemporary(realm):
    """
    A checker that breaks gives [SYS/TEMP], not a wrong-password reply, and
    not a failure count.
    """

    @implementer(ICredentialsChecker)
    class Broken:
        credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

        def requestAvatarId(self, credentials):
            return defer.fail(RuntimeError("database is down"))

    session = Session(Portal(realm, [Broken()]))
    with capturedLogs() as events:
        session.send("USER alice")
        assert session.send("PASS secret") == b"-ERR [SYS/TEMP] authentication is unavailable, try again later\r\n"
    assert any(e.get("log_failure") for e in events)
    assert b"Traceback" not in session.output()


def test_unavailableCredentialsAreTemporary(realm):
    """
    A checker whose backend cannot answer now (CredentialsUnavailable)
    gives [SYS/TEMP], not a wrong-password reply nor a failure count, and
    one log line without a traceback; the session goes on.
    """

    @implementer(ICredentialsChecker)
    class Unavailable:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials):
            return defer.fail(CredentialsUnavailable("no database connection within 3 s"))

    session = Session(Portal(realm, [Unavailable()]))
    with capturedLogs() as events:
        for _ in range(4):
            session.send("USER alice")
            assert session.send("PASS secret") == (
                b"-ERR [SYS/TEMP] authentication is unavailable, try again later\r\n"
            )
    assert not any(e.get("log_failure") for e in events)
    unavailable = [e for e in events if e.get("event") == "auth-unavailable"]
    assert len(unavailable) == 4
    assert unavailable[0]["why"] == "no database connection within 3 s" and unavailable[0]["user"] == "alice"
    assert session.send("NOOP") == b"-ERR NOOP is not allowed until you log in\r\n"


def test_loginWaitsForSlowChecker(realm):
    """
    While a login is pending, pipelined commands wait and are answered in
    order afterwards.
    """
    pending = defer.Deferred()

    @implementer(ICredentialsChecker)
    class Slow:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials):
            return pending

    session = Session(Portal(realm, [Slow()]))
    out = session.feed(b"USER alice\r\nPASS secret\r\nSTAT\r\nNOOP\r\n")
    assert out == b"+OK send your password\r\n"
    pending.callback(b"alice")
    session.pump()
    lines = session.output().split(b"\r\n")
    assert lines[0].startswith(b"+OK alice has 3 messages")
    assert lines[1].startswith(b"+OK 3 ")
    assert lines[2] == b"+OK"


def test_loginEvents(session):
    """
    Logins and failures are logged as structured events, without passwords.
    """
    with capturedLogs() as events:
        session.send("USER alice")
        session.send("PASS wrong-password")
        session.login()
        session.send("RETR 1")
        session.send("QUIT")
        session.lose()
    kinds = [e.get("event") for e in events]
    assert kinds == ["login-failed", "login", "session-end"]
    summary = events[-1]
    assert summary["user"] == "alice" and summary["retrieved"] == 1 and summary["deleted"] == 0
    assert summary["retrievedOctets"] == len(wire(MESSAGES[0]))
    assert all("wrong-password" not in repr(e) and "secret" not in repr(e) for e in events)


# Command parsing

@pytest.mark.parametrize("command", ["STAT", "LIST", "UIDL", "RETR 1", "TOP 1 1", "DELE 1", "RSET", "LAST", "NOOP"])
def test_transactionCommandsNeedLogin(session, command):
    """
    TRANSACTION commands are refused before login, and the session goes on.
    """
    name = command.split()[0]
    assert session.send(command) == b"-ERR %s is not allowed until you log in\r\n" % name.encode()
    assert session.login().startswith(b"+OK")


@pytest.mark.parametrize("command", ["USER bob", "PASS x", "APOP bob 0123456789abcdef0123456789abcdef"])
def test_authorizationCommandsRefusedAfterLogin(loggedIn, command):
    """
    AUTHORIZATION commands are refused after login.
    """
    name = command.split()[0]
    assert loggedIn.send(command) == b"-ERR %s is not allowed after login\r\n" % name.encode()
    assert loggedIn.send("STAT").startswith(b"+OK 3")


def test_everyCommandIsCovered():
    """
    The command table is the one this file and test_extensions.py (CAPA,
    AUTH, STLS, UTF8) exercise.
    """
    assert set(COMMANDS) == {
        b"USER", b"PASS", b"APOP", b"STAT", b"LIST", b"UIDL", b"RETR", b"TOP",
        b"DELE", b"RSET", b"LAST", b"NOOP", b"QUIT", b"CAPA", b"AUTH", b"STLS", b"UTF8",
    }


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"FOO", b'-ERR unknown command "FOO"'),
        (b"", b"-ERR empty command"),
        (b"   ", b"-ERR empty command"),
        (b"\xff\xfe\x00binary", b'-ERR unknown command "???binary"'),
        (b"rset 4", b"-ERR Too many arguments for the rset command."),
        (b"RETR", b"-ERR Too few arguments for the retr command."),
        (b"RETR 1 2", b"-ERR Too many arguments for the retr command."),
        (b"TOP 1", b"-ERR Too few arguments for the top command."),
        (b"STAT x", b"-ERR Too many arguments for the stat command."),
        (b"RETR abc", b'-ERR invalid message number "abc"'),
        (b"RETR -1", b'-ERR invalid message number "-1"'),
        (b"RETR +1", b'-ERR invalid message number "+1"'),
        (b"RETR 1.5", b'-ERR invalid message number "1.5"'),
        (b"RETR 0", b"-ERR no such message, only 3 messages in maildrop"),
        (b"RETR 4", b"-ERR no such message, only 3 messages in maildrop"),
        (b"RETR " + b"9" * 400, b"-ERR no such message, only 3 messages in maildrop"),
        (b"LIST 3x", b'-ERR invalid message number "3x"'),
        (b"DELE 99", b"-ERR no such message, only 3 messages in maildrop"),
        (b"TOP 1 x", b'-ERR invalid number of lines "x"'),
        (b"TOP 1 -1", b'-ERR invalid number of lines "-1"'),
        (b"X" * 600, b"-ERR command line too long (the limit is 512 octets)"),
    ],
)
def test_badInput(loggedIn, line, reply):
    """
    Wrong use gets one clear -ERR line, and the session goes on.
    """
    assert loggedIn.feed(line + b"\r\n") == reply + b"\r\n"
    assert loggedIn.send("NOOP") == b"+OK\r\n"


def test_bareLFCommands(loggedIn):
    """
    Commands ending in a bare LF work too.
    """
    assert loggedIn.feed(b"NOOP\nSTAT\n").startswith(b"+OK\r\n+OK 3 ")


def test_hugeLineWithoutNewlineCloses(session):
    """
    More than 64 KiB without a line end closes the connection cleanly.
    """
    out = session.feed(b"A" * 70000)
    assert out == b"-ERR line too long, closing connection\r\n"
    assert session.closed


def test_pipelinedCommandsAnsweredInOrder(loggedIn):
    """
    Hundreds of commands in one write get complete replies, in order.
    """
    out = loggedIn.feed(b"".join(b"LIST %d\r\n" % (i % 3 + 1) for i in range(300)) + b"RETR 2\r\nNOOP\r\n")
    lines = out.split(b"\r\n")
    assert [line.split()[1] for line in lines[:300]] == [b"%d" % (i % 3 + 1) for i in range(300)]
    assert lines[300] == b"+OK %d octets" % len(wire(MESSAGES[1]))
    assert out.endswith(b"\r\n.\r\n+OK\r\n")


# TRANSACTION

def test_statListUidl(loggedIn):
    """
    STAT, LIST and UIDL report every message, one by one or all at once.
    """
    sizes = [len(wire(m)) for m in MESSAGES]
    uids = list(loggedIn.factory.portal.realm.maildrop("alice").messages)
    assert loggedIn.send("STAT") == b"+OK 3 %d\r\n" % sum(sizes)
    assert loggedIn.send("LIST") == (
        b"+OK 3 messages (%d octets)\r\n" % sum(sizes)
        + b"".join(b"%d %d\r\n" % (i, s) for i, s in enumerate(sizes, 1))
        + b".\r\n"
    )
    assert loggedIn.send("LIST 2") == b"+OK 2 %d\r\n" % sizes[1]
    assert loggedIn.send("UIDL") == (
        b"+OK unique-id listing follows\r\n"
        + b"".join(b"%d %s\r\n" % (i, u.encode()) for i, u in enumerate(uids, 1))
        + b".\r\n"
    )
    assert loggedIn.send("UIDL 3") == b"+OK 3 %s\r\n" % uids[2].encode()


def test_retrFramesMessage(loggedIn):
    """
    RETR sends the size announced by LIST, CRLF line ends, dot-stuffing and
    a final CRLF before the terminator.
    """
    out = loggedIn.send("RETR 2")
    size = len(wire(MESSAGES[1]))
    assert out == (
        b"+OK %d octets\r\n" % size
        + b"Subject: two\r\n\r\n..starts with a dot\r\nbare LF\r\nno final newline\r\n.\r\n"
    )


def test_retrStreamsWithBackpressure(realm):
    """
    A large message goes out one chunk each time the transport asks, never
    all at once.
    """
    big = b"".join(b"line %08d\n" % i for i in range(100000))
    realm.maildrop("bob").add(big)
    portal, _ = makePortal({"bob": "pw"}, realm=realm)
    session = Session(portal)
    session.login("bob", "pw")
    session.protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
    first = session.output()
    assert first == b"+OK %d octets\r\n" % len(wire(big))
    assert session.messageProducer is not None
    session.messageProducer.resumeProducing()
    chunk = session.output()
    assert 0 < len(chunk) <= 2 * CHUNK_SIZE
    session.pump()
    rest = session.output()
    assert chunk + rest == wire(big) + b".\r\n+OK\r\n"


def test_terminatorLeavesWithTheLastChunk(loggedIn):
    """
    The final chunk of a message and the terminating "." are written in the
    same turn: the reply is complete after a single pull of the producer,
    so it never waits in a segment of its own for the client's ACK.
    """
    loggedIn.protocol.dataReceived(b"RETR 1\r\n")
    loggedIn.messageProducer.resumeProducing()
    assert loggedIn.messageProducer is None
    assert loggedIn.output() == b"+OK %d octets\r\n" % len(wire(MESSAGES[0])) + wire(MESSAGES[0]) + b".\r\n"


def test_clientGoneWhileStreaming(realm):
    """
    When the transport stops the producer because the client vanished, the
    message does not count as retrieved and nothing more is written.
    """
    realm.maildrop("bob").add(b"x" * 1000000)
    portal, _ = makePortal({"bob": "pw"}, realm=realm)
    session = Session(portal)
    session.login("bob", "pw")
    session.protocol.dataReceived(b"RETR 1\r\nNOOP\r\n")
    session.messageProducer.resumeProducing()
    session.output()
    session.transport.disconnected = True
    session.messageProducer.stopProducing()
    assert session.output() == b""
    session.lose()
    assert session.protocol.session.transaction.retrievedCount == 0
    assert not realm.maildrop("bob").locked


def test_bugInHandlerIsAnError(loggedIn, monkeypatch):
    """
    An exception raised while handling a command gives a one-line -ERR and
    the session goes on.
    """
    session = loggedIn.protocol.session
    receive = session.receive
    monkeypatch.setattr(session, "receive", lambda line: 1 / 0 if line == b"NOOP" else receive(line))
    with capturedLogs() as events:
        assert loggedIn.send("NOOP") == b"-ERR [SYS/TEMP] internal server error\r\n"
    assert any(e.get("log_failure") for e in events)
    assert loggedIn.send("STAT").startswith(b"+OK 3")


def test_topSendsHeadersAndLines(loggedIn):
    """
    TOP n k sends the headers, the blank line and k body lines; TOP n 0 no
    body line; a k beyond the body sends it all.
    """
    assert loggedIn.send("TOP 3 0") == b"+OK top of message follows\r\nSubject: three\r\n\r\n.\r\n"
    assert loggedIn.send("TOP 3 2") == (
        b"+OK top of message follows\r\nSubject: three\r\n\r\nline 1\r\nline 2\r\n.\r\n"
    )
    assert loggedIn.send("TOP 3 99999999999999") == (
        b"+OK top of message follows\r\n" + wire(MESSAGES[2]) + b".\r\n"
    )


def test_deleteSemantics(loggedIn, realm):
    """
    A deleted message disappears from STAT, LIST and UIDL, numbers do not
    shift, and it cannot be retrieved or deleted again.
    """
    sizes = [len(wire(m)) for m in MESSAGES]
    assert loggedIn.send("DELE 2") == b"+OK message 2 deleted\r\n"
    assert loggedIn.send("STAT") == b"+OK 2 %d\r\n" % (sizes[0] + sizes[2])
    assert loggedIn.send("LIST") == b"+OK 2 messages (%d octets)\r\n1 %d\r\n3 %d\r\n.\r\n" % (
        sizes[0] + sizes[2], sizes[0], sizes[2])
    assert b"\r\n2 " not in loggedIn.send("UIDL")
    for command in ("RETR 2", "TOP 2 0", "LIST 2", "UIDL 2", "DELE 2"):
        assert loggedIn.send(command) == b"-ERR message 2 already deleted\r\n"
    assert loggedIn.send("LIST 3") == b"+OK 3 %d\r\n" % sizes[2]
    assert len(realm.maildrop("alice").messages) == 3


def test_rsetRestores(loggedIn):
    """
    RSET unmarks every deleted message.
    """
    total = sum(len(wire(m)) for m in MESSAGES)
    loggedIn.send("DELE 1")
    loggedIn.send("DELE 3")
    assert loggedIn.send("RSET") == b"+OK maildrop has 3 messages (%d octets)\r\n" % total
    assert loggedIn.send("STAT") == b"+OK 3 %d\r\n" % total


def test_quitAppliesDeletions(loggedIn, realm):
    """
    Deletions happen only at QUIT, which says how many messages are left.
    """
    loggedIn.send("DELE 1")
    loggedIn.send("DELE 2")
    assert len(realm.maildrop("alice").messages) == 3
    assert loggedIn.send("QUIT") == b"+OK popsrv signing off (1 message left)\r\n"
    assert loggedIn.closed
    assert list(realm.maildrop("alice").messages.values()) == [MESSAGES[2]]
    assert realm.maildrop("alice").locked is False


def test_quitEmptiesMaildrop(loggedIn, realm):
    """
    QUIT after deleting everything says the maildrop is empty.
    """
    for n in (1, 2, 3):
        loggedIn.send(f"DELE {n}")
    assert loggedIn.send("QUIT") == b"+OK popsrv signing off (maildrop empty)\r\n"
    assert realm.maildrop("alice").messages == {}


def test_quitBeforeLogin(session):
    """
    QUIT in AUTHORIZATION just closes.
    """
    assert session.send("QUIT") == b"+OK popsrv signing off\r\n"
    assert session.closed


def test_disconnectDeletesNothing(loggedIn, realm):
    """
    A connection lost without QUIT deletes nothing and frees the lock.
    """
    loggedIn.send("DELE 1")
    loggedIn.lose()
    maildrop = realm.maildrop("alice")
    assert len(maildrop.messages) == 3 and not maildrop.locked


def test_secondSessionIsRefused(realm):
    """
    While one session holds a maildrop, another login gets [IN-USE].
    """
    portal, _ = makePortal(realm=realm)
    first, second = Session(portal), Session(portal)
    first.login()
    assert second.login() == b"-ERR [IN-USE] maildrop is locked by another session, try again later\r\n"
    first.send("QUIT")
    assert second.login().startswith(b"+OK alice has 3")


def test_last(loggedIn, realm):
    """
    LAST is the highest message number retrieved (RFC 1225); RSET brings it
    back to its value at login, which counts messages seen earlier.
    """
    assert loggedIn.send("LAST") == b"+OK 0 is the last read message.\r\n"
    loggedIn.send("TOP 3 0")
    assert loggedIn.send("LAST") == b"+OK 0 is the last read message.\r\n"
    loggedIn.send("RETR 2")
    loggedIn.send("RETR 1")
    assert loggedIn.send("LAST") == b"+OK 2 is the last read message.\r\n"
    loggedIn.send("RSET")
    assert loggedIn.send("LAST") == b"+OK 0 is the last read message.\r\n"
    loggedIn.send("RETR 2")
    loggedIn.send("QUIT")
    portal = loggedIn.factory.portal
    again = Session(portal)
    again.login()
    assert again.send("LAST") == b"+OK 2 is the last read message.\r\n"


def test_noop(loggedIn):
    """
    NOOP answers +OK.
    """
    assert loggedIn.send("NOOP") == b"+OK\r\n"


# Timeouts

def test_idleTimeoutClosesWithoutDeleting(realm):
    """
    An idle session is closed after the timeout, silently, deleting nothing.
    """
    portal, _ = makePortal(realm=realm)
    session = Session(portal, timeout=600)
    session.login()
    session.send("DELE 1")
    session.clock.advance(599)
    assert not session.closed
    session.send("NOOP")
    session.clock.advance(599)
    assert not session.closed
    session.clock.advance(1)
    assert session.closed
    assert session.output() == b""
    session.lose()
    assert len(realm.maildrop("alice").messages) == 3


def test_slowRetrIsNotIdle(realm):
    """
    A message still streaming keeps the session alive.
    """
    realm.maildrop("bob").add(b"x" * (11 * CHUNK_SIZE))
    portal, _ = makePortal({"bob": "pw"}, realm=realm)
    session = Session(portal, timeout=10)
    session.login("bob", "pw")
    session.protocol.dataReceived(b"RETR 1\r\n")
    for _ in range(10):
        session.clock.advance(5)
        session.messageProducer.resumeProducing()
    assert not session.closed


# Backend failures

class FailingMaildrop(MemoryMaildrop):
    """
    A memory maildrop whose operations fail on request.
    """

    failList = failCommit = failSend = failSendLater = False

    def listMessages(self):
        if self.failList:
            raise MaildropError("disk on fire")
        return super().listMessages()

    def sendMessage(self, uid, consumer):
        if self.failSend:
            return defer.fail(MaildropError("unreadable"))
        if self.failSendLater:
            consumer.registerProducer(object(), False)
            consumer.write(b"partial\n")
            consumer.unregisterProducer()
            return defer.fail(OSError("I/O error"))
        return super().sendMessage(uid, consumer)

    def commit(self, deleted, seen):
        if self.failCommit:
            raise MaildropError("read-only file system")
        super().commit(deleted, seen)


@pytest.fixture
def failing():
    maildrop = FailingMaildrop("alice", MESSAGES)
    realm = MemoryRealm({"alice": maildrop})
    portal, _ = makePortal(realm=realm)
    return maildrop, Session(portal)


def test_listFailureIsTemporary(failing):
    """
    A maildrop that cannot be listed gives [SYS/TEMP] and stays unlocked.
    """
    maildrop, session = failing
    maildrop.failList = True
    with capturedLogs():
        assert session.login() == b"-ERR [SYS/TEMP] maildrop is unavailable, try again later\r\n"
    assert not maildrop.locked


def test_commitFailureIsTemporary(failing):
    """
    Deletions that cannot be applied give [SYS/TEMP] at QUIT; nothing is
    deleted and the lock is released.
    """
    maildrop, session = failing
    session.login()
    session.send("DELE 1")
    maildrop.failCommit = True
    with capturedLogs():
        assert session.send("QUIT") == b"-ERR [SYS/TEMP] could not remove the deleted messages, try again later\r\n"
    assert len(maildrop.messages) == 3 and not maildrop.locked and session.closed


def test_unreadableMessage(failing):
    """
    A message that cannot be opened gives -ERR and the session goes on.
    """
    maildrop, session = failing
    session.login()
    maildrop.failSend = True
    with capturedLogs():
        assert session.send("RETR 1") == b"-ERR [SYS/TEMP] message 1 cannot be read now, try again later\r\n"
    maildrop.failSend = False
    assert session.send("RETR 1").startswith(b"+OK")


def test_vanishedMessage(failing):
    """
    A message removed behind the session's back gives a plain -ERR.
    """
    maildrop, session = failing
    session.login()
    del maildrop.messages[next(iter(maildrop.messages))]
    assert session.send("RETR 1") == b"-ERR message 1 was removed by another program\r\n"
    assert isinstance(MessageVanished("x"), MaildropError)


def test_failureWhileStreamingAborts(failing):
    """
    A read error after +OK breaks the connection: a truncated message is
    never presented as complete.
    """
    maildrop, session = failing
    session.login()
    maildrop.failSendLater = True
    with capturedLogs():
        out = session.send("RETR 1")
    assert out.startswith(b"+OK") and not out.endswith(b".\r\n")
    assert session.transport.disconnecting


def test_unexpectedErrorHasNoTraceback(realm):
    """
    A bug in a backend gives a one-line -ERR, logged for the operator.
    """

    class Buggy(MemoryMaildrop):
        def listMessages(self):
            return [object()]

    realm.maildrops["alice"] = Buggy("alice")
    portal, _ = makePortal(realm=realm)
    session = Session(portal)
    with capturedLogs() as events:
        session.send("USER alice")
        out = session.send("PASS secret")
    assert out == b"-ERR [SYS/TEMP] internal server error\r\n"
    assert any(e.get("log_failure") for e in events)


def test_unauthorizedRealm(realm):
    """
    A realm that refuses the user gives the ordinary [AUTH] failure.
    """

    class Refusing(MemoryRealm):
        def requestAvatar(self, avatarId, mind, *interfaces):
            raise UnauthorizedLogin("not here")

    portal, _ = makePortal(realm=Refusing())
    session = Session(portal)
    assert session.login() == b"-ERR [AUTH] invalid user name or password\r\n"


# Flow control, failure pacing and the fixes they need

def test_unreadRepliesStopReading(loggedIn):
    """
    When the client does not read and the transport's buffer fills, the
    session stops reading commands until the buffer drains.
    """
    gate = loggedIn.transport.producer
    assert loggedIn.transport.streaming is True
    gate.pauseProducing()
    assert loggedIn.feed(b"STAT\r\nNOOP\r\n") == b""
    assert loggedIn.transport.producerState == "paused"
    gate.resumeProducing()
    loggedIn.pump()
    assert loggedIn.output().startswith(b"+OK 3 ")


def test_gateReturnsAfterRetr(loggedIn):
    """
    The read gate gives way to a message's producer and comes back after it.
    """
    gate = loggedIn.transport.producer
    loggedIn.send("RETR 1")
    assert loggedIn.transport.producer is gate and loggedIn.transport.streaming


def test_timeoutAbortsAStalledRetr(realm):
    """
    A client that stops reading in the middle of a RETR is cut off at the
    idle timeout, and its maildrop is released.
    """
    realm.maildrop("bob").add(b"x" * 1000000)
    portal, _ = makePortal({"bob": "pw"}, realm=realm)
    session = Session(portal, timeout=60)
    session.login("bob", "pw")
    session.protocol.dataReceived(b"RETR 1\r\n")
    session.messageProducer.resumeProducing()
    session.clock.advance(60)
    assert session.transport.disconnecting and not session.transport.disconnected
    session.clock.advance(10)
    assert session.transport.disconnected
    session.lose()
    assert not realm.maildrop("bob").locked


def test_lastAfterRsetAndRetrieveAgain(loggedIn):
    """
    A message retrieved again after RSET counts again for LAST.
    """
    loggedIn.send("RETR 3")
    loggedIn.send("RSET")
    loggedIn.send("RETR 3")
    assert loggedIn.send("LAST") == b"+OK 3 is the last read message.\r\n"


def test_asyncCommitKeepsLockUntilDone(realm):
    """
    If the connection is lost while a backend is still applying deletions,
    the maildrop stays locked until the backend is done.
    """
    pending = defer.Deferred()

    class SlowCommit(MemoryMaildrop):
        def commit(self, deleted, seen):
            return pending.addCallback(lambda _: MemoryMaildrop.commit(self, deleted, seen))

    maildrop = SlowCommit("alice", MESSAGES)
    portal, _ = makePortal(realm=MemoryRealm({"alice": maildrop}))
    session = Session(portal)
    session.login()
    session.send("DELE 1")
    session.send("QUIT")
    session.lose()
    assert maildrop.locked
    pending.callback(None)
    assert not maildrop.locked and len(maildrop.messages) == 2


def test_failedLoginAnsweredAfterFixedDelay(realm):
    """
    A failed login is answered one second after the command, whatever the
    checker did; commands sent meanwhile wait; a good login is immediate.
    """
    portal, _ = makePortal(realm=realm)
    session = Session(portal, authFailureDelay=1.0)
    session.send("USER nobody")
    assert session.feed(b"PASS wrong\r\nNOOP\r\n") == b""
    session.clock.advance(0.5)
    assert session.output() == b""
    session.clock.advance(0.5)
    assert session.output() == (
        b"-ERR [AUTH] invalid user name or password\r\n-ERR NOOP is not allowed until you log in\r\n"
    )
    assert session.login().startswith(b"+OK alice has 3")


def test_nonUTF8NameFailsLogin(session):
    """
    A user name that is not UTF-8 fails like a wrong password.
    """
    session.send(b"USER \xff\xfe")
    assert session.send("PASS secret") == b"-ERR [AUTH] invalid user name or password\r\n"


def test_checkerUnicodeErrorIsAuthFailure(realm):
    """
    A checker that cannot decode the credentials (Twisted's unix checker
    with a non-UTF-8 password) gives [AUTH], not [SYS/TEMP].
    """

    @implementer(ICredentialsChecker)
    class Decoding:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials):
            credentials.password.decode("utf-8")
            return defer.fail(UnauthorizedLogin())

    session = Session(Portal(realm, [Decoding()]))
    session.send("USER alice")
    assert session.send(b"PASS \xff") == b"-ERR [AUTH] invalid user name or password\r\n"


def test_tooManyBadCommandsClose(session):
    """
    The twentieth malformed command in a row closes the connection, with one
    reply line; ordinary refusals in between never count, and a command
    that succeeds starts the count again.
    """
    for _ in range(19):
        assert session.send("BOGUS").startswith(b"-ERR unknown command")
    assert session.send("STLS").startswith(b"-ERR")
    assert session.send("USER alice") == b"+OK send your password\r\n"
    for _ in range(19):
        assert session.send("BOGUS").startswith(b"-ERR unknown command")
    assert not session.closed
    assert session.send("BOGUS") == b"-ERR too many bad commands, closing connection\r\n"
    assert session.closed


def test_sessionEndLoggedWithoutLogin(session):
    """
    A connection that never logs in still gets its one-line summary.
    """
    with capturedLogs() as events:
        session.send("QUIT")
        session.lose()
    (summary,) = [e for e in events if e.get("event") == "session-end"]
    assert summary["user"] == "-" and summary["reason"] == "quit"


def test_quitCommitsOnlyChanges(realm):
    """
    QUIT asks the maildrop only for what changes: no commit at all when
    nothing was deleted and every retrieved message was already seen.
    """
    calls = []

    class Recording(MemoryMaildrop):
        def commit(self, deleted, seen):
            calls.append((set(deleted), set(seen)))
            super().commit(deleted, seen)

    maildrop = Recording("alice", MESSAGES)
    maildrop.seenUids.add(list(maildrop.messages)[0])
    portal, _ = makePortal(realm=MemoryRealm({"alice": maildrop}))
    first = Session(portal)
    first.login()
    first.send("RETR 1")
    first.send("QUIT")
    assert calls == []
    uids = list(maildrop.messages)
    second = Session(portal)
    second.login()
    second.send("RETR 1")
    second.send("RETR 2")
    second.send("DELE 3")
    second.send("QUIT")
    assert calls == [({uids[2]}, {uids[1]})]


@pytest.mark.parametrize("command", ["LIST", "UIDL"])
def test_longListingsAreSentAsTheClientReads(realm, command):
    """
    LIST and UIDL of a big maildrop send a batch of lines each time the
    transport asks for more; the next command is answered only after the
    terminator, and deleted messages stay out.
    """
    from popsrv.pop3.sending import LISTING_BATCH

    count = 2 * LISTING_BATCH + 5
    maildrop = realm.maildrop("bob")
    for n in range(count):
        maildrop.add(b"Subject: %d\r\n\r\nbody\r\n" % n)
    portal, _ = makePortal({"bob": "pw"}, realm=realm)
    session = Session(portal)
    session.login("bob", "pw")
    assert session.send("DELE 2") == b"+OK message 2 deleted\r\n"
    session.protocol.dataReceived(command.encode() + b"\r\nSTAT\r\n")
    status = session.output()
    assert status.startswith(b"+OK ") and status.count(b"\r\n") == 1
    batches = []
    while session.messageProducer is not None:
        session.messageProducer.resumeProducing()
        batches.append(session.output())
    assert all(batch.count(b"\r\n") <= LISTING_BATCH + 1 for batch in batches[:-1])
    body = b"".join(batches)
    listing, _, after = body.partition(b".\r\n")
    lines = listing.split(b"\r\n")[:-1]
    assert [int(line.split()[0]) for line in lines] == [1] + list(range(3, count + 1))
    assert after.startswith(b"+OK %d " % (count - 1))
    if command == "LIST":
        assert after == b"+OK %d %d\r\n" % (count - 1, sum(int(line.split()[1]) for line in lines))


def test_aLongListingStopsWhenTheClientGoes(realm):
    """
    A client that goes away in the middle of a long listing (the transport
    stops the producer, then loses the connection) ends the session
    cleanly: no more lines, nothing logged as an error, the maildrop
    released.
    """
    from popsrv.pop3.sending import LISTING_BATCH

    maildrop = realm.maildrop("bob")
    for n in range(LISTING_BATCH * 3):
        maildrop.add(b"Subject: %d\r\n\r\nbody\r\n" % n)
    portal, _ = makePortal({"bob": "pw"}, realm=realm)
    session = Session(portal)
    session.login("bob", "pw")
    with capturedLogs() as events:
        session.protocol.dataReceived(b"UIDL\r\n")
        producer = session.messageProducer
        producer.resumeProducing()
        session.output()
        producer.stopProducing()
        session.lose()
        producer.resumeProducing()
    assert session.output() == b""
    assert not any(e.get("log_failure") or e.get("log_level") is LogLevel.error for e in events)
    assert maildrop.locked is False
