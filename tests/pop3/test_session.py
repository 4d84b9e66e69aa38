"""
The sans-IO POP3 session driven directly, without transport or reactor, as
h11 and wsproto are tested: hypothesis generates command sequences and a
plain model of RFC 1939 says what every reply must be.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set

import attr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.credentials import UsernamePassword

from popsrv.auth import sasl
from popsrv.auth.credentials import APOPCredentials
from popsrv.messages import MessageInfo
from popsrv.pop3.commands import COMMANDS, State
from popsrv.pop3.effects import Authenticate, LogIn, Reply, SendListing, StartTLS, Stream, Update
from popsrv.pop3.session import MAX_AUTH_FAILURES, MAX_BAD_COMMANDS, IllegalTransition, Session

CHALLENGE = b"<1896.697170952@pop.example>"


@attr.s(auto_attribs=True)
class FakeEnvironment:
    """
    A connection as the session sees it, with every answer settable.
    """

    isSecure: bool = False
    canSTLS: bool = True
    plaintext: bool = True
    tlsOnly: bool = True
    passwords: bool = True
    apop: bool = True
    offered: Sequence[sasl.Mechanism] = sasl.MECHANISMS

    def secure(self) -> bool:
        return self.isSecure

    def stlsAvailable(self) -> bool:
        return self.canSTLS and not self.isSecure

    def plaintextAllowed(self) -> bool:
        return self.plaintext

    def stlsWouldAllowPlaintext(self) -> bool:
        return self.tlsOnly

    def acceptsPasswords(self) -> bool:
        return self.passwords

    def acceptsAPOP(self) -> bool:
        return self.apop

    def mechanisms(self) -> Sequence[sasl.Mechanism]:
        return self.offered


def newSession(environment: Optional[FakeEnvironment] = None, **kwargs: object) -> Session:
    session = Session(environment or FakeEnvironment(), CHALLENGE, **kwargs)  # type: ignore[arg-type]
    session.greet()
    return session


def reply(session: Session, line: bytes) -> bytes:
    effect = session.receive(line)
    assert isinstance(effect, Reply), effect
    return effect.data


def loggedIn(messages: Sequence[MessageInfo]) -> Session:
    session = newSession()
    assert reply(session, b"USER alice") == b"+OK send your password\r\n"
    effect = session.receive(b"PASS secret")
    assert isinstance(effect, LogIn)
    session.loginSucceeded("alice", messages)
    return session


messageLists = st.lists(
    st.builds(MessageInfo, st.uuids().map(lambda u: u.hex), st.integers(0, 10**9), st.booleans()),
    max_size=6,
    unique_by=lambda m: m.uid,
)


class Model:
    """
    RFC 1939's TRANSACTION state, written plainly.
    """

    def __init__(self, messages: Sequence[MessageInfo]) -> None:
        self.messages = list(messages)
        self.deleted: Set[int] = set()
        seen = [n for n, m in enumerate(messages, 1) if m.seen]
        self.initialLast = self.last = max(seen, default=0)
        self.retrieved: Dict[int, None] = {}

    def live(self) -> List[int]:
        return [n for n in range(1, len(self.messages) + 1) if n not in self.deleted]

    def stat(self) -> bytes:
        live = self.live()
        return b"+OK %d %d\r\n" % (len(live), sum(self.messages[n - 1].size for n in live))

    def named(self, number: int) -> Optional[bytes]:
        """The -ERR a message number gets, or None if it names a live message."""
        if not 1 <= number <= len(self.messages):
            return b"-ERR no such message, only %d messages in maildrop\r\n" % len(self.messages)
        if number in self.deleted:
            return b"-ERR message %d already deleted\r\n" % number
        return None


commands = st.one_of(
    st.tuples(st.sampled_from(["DELE", "LIST", "UIDL", "RETR", "TOP"]), st.integers(0, 7)),
    st.tuples(st.sampled_from(["STAT", "RSET", "LAST", "NOOP", "LIST", "UIDL"]), st.none()),
)


@settings(max_examples=500, deadline=None)
@given(messageLists, st.lists(commands, max_size=40))
def test_transactionFollowsTheModel(messages: List[MessageInfo], script: list) -> None:
    """
    Whatever the sequence of TRANSACTION commands, every reply is the
    model's: numbers never shift, deleted messages stay deleted until RSET,
    STAT counts the live messages, LAST the highest retrieved; QUIT commits
    exactly the marked messages and marks seen the newly retrieved ones;
    refusals of valid commands (no such message) never close the session.
    """
    session = loggedIn(messages)
    model = Model(messages)
    tops = 0
    for name, number in script:
        line = name.encode() if number is None else b"%s %d" % (name.encode(), number)
        if name == "TOP":
            line += b" 0"
        effect = session.receive(line)
        if number is not None and model.named(number) is not None:
            assert effect == Reply(model.named(number)), (line, effect)
            continue
        if name == "STAT":
            assert effect == Reply(model.stat())
        elif name == "DELE":
            assert effect == Reply(b"+OK message %d deleted\r\n" % number)
            model.deleted.add(number)
        elif name == "RSET":
            model.deleted.clear()
            model.last = model.initialLast
            count, octets = model.stat().split()[1:]
            assert effect == Reply(b"+OK maildrop has %s messages (%s octets)\r\n" % (count, octets))
        elif name == "LAST":
            assert effect == Reply(b"+OK %d is the last read message.\r\n" % model.last)
        elif name == "NOOP":
            assert effect == Reply(b"+OK\r\n")
        elif name in ("LIST", "UIDL") and number is None:
            assert isinstance(effect, SendListing)
            field = (lambda m: str(m.size)) if name == "LIST" else (lambda m: m.uid)
            expected = [b"%d %s" % (n, field(model.messages[n - 1]).encode()) for n in model.live()]
            assert list(effect.lines) == expected
            assert effect.count == len(expected)
        elif name in ("LIST", "UIDL"):
            message = model.messages[number - 1]
            value = str(message.size) if name == "LIST" else message.uid
            assert effect == Reply(b"+OK %d %s\r\n" % (number, value.encode()))
        else:
            assert isinstance(effect, Stream)
            tops += name == "TOP"
            assert effect.number == number and effect.message == model.messages[number - 1]
            assert effect.bodyLines == (0 if name == "TOP" else None)
            if name == "RETR":
                session.transaction.retrieved(number)
                model.last = max(model.last, number)
                model.retrieved[number] = None
    effect = session.receive(b"QUIT")
    assert session.state is State.UPDATE
    assert isinstance(effect, Update)
    assert effect.deleted == {model.messages[n - 1].uid for n in model.deleted}
    newlySeen = {model.messages[n - 1].uid for n in model.retrieved if not model.messages[n - 1].seen}
    assert effect.seen == newlySeen - effect.deleted
    left = len(messages) - len(model.deleted)
    expected = b"+OK popsrv signing off (%d message%s left)\r\n" % (left, b"" if left == 1 else b"s")
    assert session.updated(True) == (expected if left else b"+OK popsrv signing off (maildrop empty)\r\n")
    assert session.state is State.CLOSED
    summary = session.summary()
    assert summary["deleted"] == len(model.deleted)
    deletedOctets = sum(model.messages[n - 1].size for n in model.deleted)
    total = sum(m.size for m in messages)
    assert summary["deletedOctets"] == deletedOctets
    assert (summary["messagesBefore"], summary["octetsBefore"]) == (len(messages), total)
    assert (summary["messagesAfter"], summary["octetsAfter"]) == (left, total - deletedOctets)
    assert summary["retrieved"] == len(model.retrieved)
    assert summary["top"] == tops


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=30), st.booleans())
def test_anyLineGetsOneEffectAndNeverAnException(lines: List[bytes], logIn: bool) -> None:
    """
    Arbitrary bytes, in either state, always give an effect, never an
    exception; a reply is one or more CRLF-ended lines, and the session
    closes itself after too many bad commands.
    """
    session = loggedIn([MessageInfo("a", 3)]) if logIn else newSession()
    for line in lines:
        line = line.replace(b"\n", b"")
        if session.state is not State.AUTHORIZATION and session.state is not State.TRANSACTION:
            with pytest.raises(IllegalTransition):
                session.receive(line)
            return
        effect = session.receive(line)
        if isinstance(effect, Reply):
            assert effect.data.endswith(b"\r\n")
            assert effect.data.startswith((b"+OK", b"-ERR"))
            if effect.close == "too many bad commands":
                assert session.badCommands == MAX_BAD_COMMANDS
                return
        assert session.badCommands < MAX_BAD_COMMANDS


@given(st.sampled_from(sorted(COMMANDS)), st.booleans())
def test_commandsOfTheOtherStateAreRefused(name: bytes, logIn: bool) -> None:
    """
    A command of the other state gets the seed transcripts' kind of -ERR
    and changes nothing.
    """
    session = loggedIn([]) if logIn else newSession()
    syntax = COMMANDS[name]
    if syntax.state is None or syntax.state is session.state:
        return
    before = session.state
    effect = session.receive(name + b" 1" * syntax.minArgs)
    assert isinstance(effect, Reply) and effect.data.startswith(b"-ERR ")
    assert (b"until you log in" if not logIn else b"after login") in effect.data
    assert session.state is before


def test_lifecycleIsOneEnumAndIllegalMovesRaise() -> None:
    """
    GREETING -> AUTHORIZATION -> TRANSACTION -> UPDATE -> CLOSED, and any
    other move is refused in one place.
    """
    session = Session(FakeEnvironment(), CHALLENGE)
    assert session.state is State.GREETING
    with pytest.raises(IllegalTransition):
        session.receive(b"NOOP")
    with pytest.raises(IllegalTransition):
        session.loginSucceeded("alice", [])
    assert session.greet().endswith(CHALLENGE + b"\r\n")
    assert session.state is State.AUTHORIZATION
    with pytest.raises(IllegalTransition):
        session.updated(True)
    session.loginSucceeded("alice", [])
    assert session.state is State.TRANSACTION
    with pytest.raises(IllegalTransition):
        session.greet()
    assert isinstance(session.receive(b"QUIT"), Update)
    session.close()
    assert session.state is State.UPDATE, "the update finishes first"
    session.updated(False)
    assert session.state is State.CLOSED
    session.close()
    assert session.state is State.CLOSED


def test_quitBeforeLoginCloses() -> None:
    """
    QUIT in AUTHORIZATION signs off and closes, deleting nothing.
    """
    session = newSession()
    assert session.receive(b"quit") == Reply(b"+OK popsrv signing off\r\n", close="quit")
    assert session.state is State.CLOSED


def test_greetingWithoutAPOP() -> None:
    """
    No challenge in the greeting when APOP cannot be checked.
    """
    session = Session(FakeEnvironment(apop=False), CHALLENGE)
    assert session.greet() == b"+OK popsrv ready\r\n"


def test_userPassAndAPOPGiveCredentials() -> None:
    """
    USER then PASS gives the portal a user name and password (spaces kept);
    APOP a digest of the challenge; a NUL or invalid UTF-8 is marked
    malformed, and PASS without USER is refused.
    """
    session = newSession()
    assert reply(session, b"PASS x") == b"-ERR give USER before PASS\r\n"
    reply(session, b"USER alice")
    effect = session.receive(b"PASS two words")
    assert isinstance(effect, LogIn) and not effect.malformed
    assert isinstance(effect.credentials, UsernamePassword)
    assert (effect.credentials.username, effect.credentials.password) == (b"alice", b"two words")
    reply(session, b"USER \xff\xfe")
    effect = session.receive(b"PASS x")
    assert isinstance(effect, LogIn) and effect.malformed and effect.user == b"\xff\xfe"
    reply(session, b"USER alice")
    effect = session.receive(b"PASS a\0b")
    assert isinstance(effect, LogIn) and effect.malformed
    effect = session.receive(b"APOP alice c4c9334bac560ecc979e58001b3e22fb")
    assert isinstance(effect, LogIn) and isinstance(effect.credentials, APOPCredentials)
    assert not effect.malformed and effect.method == "APOP"
    assert session.receive(b"APOP alice nothex").malformed  # type: ignore[union-attr]


def test_loginFailuresCloseAfterTheLimit() -> None:
    """
    Failed logins get the same [AUTH] reply; the last allowed closes.
    """
    session = newSession()
    for _ in range(MAX_AUTH_FAILURES - 1):
        assert session.loginFailed() == Reply(b"-ERR [AUTH] invalid user name or password\r\n")
    last = session.loginFailed()
    assert last.close == "too many login failures" and last.data.startswith(b"-ERR [AUTH] ")


def test_plaintextPolicy() -> None:
    """
    Where plaintext is not allowed, USER, PASS and plaintext SASL get an
    [AUTH] refusal (advising STLS where it would help); CAPA leaves out USER
    and the plaintext mechanisms.
    """
    environment = FakeEnvironment(plaintext=False)
    session = newSession(environment)
    refusal = b"-ERR [AUTH] plaintext authentication is not allowed on this connection; use STLS first\r\n"
    assert reply(session, b"USER alice") == refusal
    assert reply(session, b"AUTH PLAIN") == refusal
    environment.tlsOnly = False
    assert reply(session, b"PASS x").endswith(b"connection\r\n")
    capabilities = session.capabilities()
    assert b"USER" not in capabilities
    sasl_line = next(line for line in capabilities if line.startswith(b"SASL "))
    assert b"PLAIN" not in sasl_line.split() and b"CRAM-MD5" in sasl_line.split()
    assert isinstance(session.receive(b"AUTH CRAM-MD5"), Authenticate)


def test_authArguments() -> None:
    """
    AUTH lists mechanisms, refuses unknown ones and bad base64, and takes
    "=" as an empty initial response.
    """
    session = newSession()
    listing = reply(session, b"AUTH")
    assert listing.startswith(b"+OK methods follow\r\n") and listing.endswith(b"\r\n.\r\n")
    assert reply(session, b"AUTH X-NOPE") == b'-ERR unsupported authentication mechanism "X-NOPE"\r\n'
    assert reply(session, b"AUTH PLAIN !!!") == b"-ERR invalid base64 data\r\n"
    effect = session.receive(b"AUTH plain =")
    assert isinstance(effect, Authenticate) and effect.response == b"" and effect.mechanism.name == "PLAIN"
    effect = session.receive(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==")
    assert isinstance(effect, Authenticate) and effect.response == b"\0alice\0secret"


def test_stls() -> None:
    """
    STLS starts TLS once, only where it is available, and forgets USER.
    """
    environment = FakeEnvironment()
    session = newSession(environment)
    reply(session, b"USER alice")
    assert session.receive(b"STLS") == StartTLS(b"+OK begin TLS negotiation\r\n")
    environment.isSecure = True
    assert reply(session, b"PASS secret") == b"-ERR give USER before PASS\r\n"
    assert reply(session, b"STLS") == b"-ERR TLS is already active\r\n"
    assert reply(newSession(FakeEnvironment(canSTLS=False)), b"STLS") == (
        b"-ERR STLS is not available on this server\r\n"
    )


def test_capabilities() -> None:
    """
    CAPA lists what the session offers, the same before and after login.
    """
    session = newSession(expire=None, loginDelay=900)
    before = reply(session, b"CAPA")
    assert before.startswith(b"+OK capability list follows\r\n")
    for line in (b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"USER", b"STLS", b"EXPIRE NEVER",
                 b"LOGIN-DELAY 900", b"UTF8 USER"):
        assert b"\r\n" + line + b"\r\n" in before
    session.loginSucceeded("alice", [])
    assert reply(session, b"CAPA") == before


def test_onlyMalformedCommandsInARowClose() -> None:
    """
    Unknown commands and syntax errors close the session at the
    L{MAX_BAD_COMMANDS}th in a row, with exactly one reply line; valid
    commands that fail (no such message) never count, and a command that
    succeeds starts the count again.
    """
    session = loggedIn([MessageInfo("a", 3)])
    for _ in range(MAX_BAD_COMMANDS * 3):
        effect = session.receive(b"RETR 9")
        assert effect == Reply(b"-ERR no such message, only 1 messages in maildrop\r\n")
        assert effect.close is None
    for _ in range(MAX_BAD_COMMANDS * 3):
        for _ in range(MAX_BAD_COMMANDS - 1):
            effect = session.receive(b"XYZZY")
            assert isinstance(effect, Reply) and effect.close is None
        assert session.receive(b"NOOP") == Reply(b"+OK\r\n")
    for line in [b"XYZZY", b"RETR x", b"TOP 1 y", b"USER bob", b"LIST 1 2", b""] * 4:
        effect = session.receive(line)
        if effect.close is not None:
            break
    assert isinstance(effect, Reply)
    assert effect == Reply(b"-ERR too many bad commands, closing connection\r\n", close="too many bad commands")
    assert effect.data.count(b"\r\n") == 1
    assert session.badCommands == MAX_BAD_COMMANDS
