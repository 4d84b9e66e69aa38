"""
Tests of the protocol's defences against hostile clients, without a
reactor: connection limits, the login timeout, the authentication penalty
and the queue of checks.
"""

from __future__ import annotations

import base64
from typing import Iterator, List

import pytest
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.task import Clock

from popsrv.auth.penalty import AuthPenalty
from popsrv.auth.queue import LoginQueue
from popsrv.pop3.limits import ConnectionLimits, defaultMaxConnections
from popsrv.pop3.policy import LoginPolicy
from popsrv.pop3.reading import HOLD_OCTETS
from popsrv.scoreboard import WAYS, Scoreboard
from popsrv.store.memory import MemoryRealm
from tests.support.session import Session, makePortal

REFUSED = b"-ERR [AUTH] invalid user name or password\r\n"
FULL = b"-ERR [SYS/TEMP] too many connections\r\n"
# These tests' clients are not on loopback: let them send passwords.
ANYWHERE = LoginPolicy("always")


@pytest.fixture
def board() -> Iterator[Scoreboard]:
    scoreboard = Scoreboard.create(columns=1, capacity=256)
    yield scoreboard
    scoreboard.close()


def test_connectionsPerAddressAndInAll(board: Scoreboard) -> None:
    """
    Over a limit a connection gets one [SYS/TEMP] line and is closed at
    once; closing a connection makes room again; other addresses are
    served until the server is full.
    """
    portal, _ = makePortal()
    clock = Clock()
    limits = ConnectionLimits(board, maxConnections=5, maxPerAddress=3)

    def connect(peer: str) -> Session:
        return Session(portal, clock=clock, peer=peer, limits=limits)

    first = [connect("192.0.2.1") for _ in range(3)]
    assert all(s.greeting.startswith(b"+OK") for s in first)
    over = connect("192.0.2.1")
    assert over.greeting == FULL and over.closed
    over.lose()
    assert board.total() == 3
    assert connect("::ffff:192.0.2.1").greeting == FULL
    first[0].lose()
    assert connect("192.0.2.1").greeting.startswith(b"+OK")
    assert connect("198.51.100.1").greeting.startswith(b"+OK")
    assert connect("198.51.100.2").greeting.startswith(b"+OK")
    assert board.total() == 5
    assert connect("203.0.113.9").greeting == FULL
    assert connect("2001:db8::1").greeting == FULL


def test_aFullTableAdmitsNoMoreAndPacesNothing() -> None:
    """
    When every row an address may use holds live connections, its new
    connection is refused rather than left uncounted, and its logins go
    unpaced; a connection counted before still leaves cleanly.
    """
    board = Scoreboard.create(columns=1, capacity=WAYS)
    limits = ConnectionLimits(board, maxConnections=None, maxPerAddress=None)
    hosts = [f"192.0.2.{n}" for n in range(WAYS)]
    for host in hosts:
        assert limits.admit(host, 0.0) is None
    assert limits.admit("198.51.100.1", 0.0) == "server"
    assert board.total() == WAYS
    assert AuthPenalty(board).reserve("198.51.100.1", 5.0) == 5.0
    limits.leave(hosts[0], 1.0)
    assert board.total() == WAYS - 1
    assert limits.admit("198.51.100.1", 2.0) is None
    board.close()


def test_refusedConnectionsIgnoreCommands(board: Scoreboard) -> None:
    """A refused connection answers nothing more, whatever it sends."""
    portal, _ = makePortal()
    limits = ConnectionLimits(board, maxConnections=0, maxPerAddress=None)
    s = Session(portal, limits=limits)
    assert s.greeting == FULL
    assert s.send("USER alice") == b""
    assert s.send("PASS secret") == b""


def test_defaultMaxConnections() -> None:
    """The default keeps descriptors for each session and some to spare."""
    assert defaultMaxConnections(1024) == 160
    assert defaultMaxConnections(65536) == 10912
    assert defaultMaxConnections(10) == 1


def test_loginTimeoutIsShorter() -> None:
    """
    A connection that does not log in is closed after the login timeout; a
    logged-in one only after the session timeout.
    """
    portal, _ = makePortal()
    idle = Session(portal, timeout=600, loginTimeout=60)
    idle.clock.advance(59)
    assert not idle.closed
    idle.send("CAPA")
    idle.clock.advance(59)
    assert not idle.closed
    idle.clock.advance(1)
    assert idle.closed
    working = Session(portal, timeout=600, loginTimeout=60)
    assert working.login().startswith(b"+OK")
    working.clock.advance(599)
    assert not working.closed
    working.clock.advance(1)
    assert working.closed


def test_penaltyDelaysTheAddressNotOthers(board: Scoreboard) -> None:
    """
    After failures from an address, its next verdicts come later and
    later, even on new connections; another address is answered at once,
    and a right password still logs in, late.
    """
    portal, _ = makePortal()
    clock = Clock()
    penalty = AuthPenalty(board)

    def connect(peer: str) -> Session:
        return Session(portal, clock=clock, peer=peer, penalty=penalty, policy=ANYWHERE)

    guesser = connect("192.0.2.66")
    assert guesser.login(password="wrong") == REFUSED
    assert guesser.login(password="wrong") == b""
    clock.advance(1)
    assert guesser.output() == REFUSED
    assert guesser.login(password="wrong") == b""
    clock.advance(2)
    assert guesser.output().startswith(b"-ERR [AUTH]") and guesser.closed
    again = connect("192.0.2.66")
    assert again.login(password="wrong") == b""
    clock.advance(3.9)
    assert again.output() == b""
    clock.advance(0.1)
    assert again.output() == REFUSED
    other = connect("198.51.100.1")
    assert other.login().startswith(b"+OK alice has")
    other.send("QUIT")
    owner = connect("192.0.2.66")
    assert owner.send("USER alice").startswith(b"+OK")
    assert owner.send("PASS secret") == b""
    clock.advance(8)
    assert owner.output().startswith(b"+OK alice has")
    assert penalty.reserve("192.0.2.66", clock.seconds()) == clock.seconds()


def test_penaltyForgetsLoginsOfClientsThatLeft(board: Scoreboard) -> None:
    """
    A client that leaves while its login waits for its slot is not checked
    and leaves nothing pending.
    """
    portal, _ = makePortal()
    clock = Clock()
    penalty = AuthPenalty(board)
    for _ in range(3):
        penalty.reserve("192.0.2.66", 0.0)
        penalty.failed("192.0.2.66", 0.0)
    waiting = Session(portal, clock=clock, peer="192.0.2.66", penalty=penalty, policy=ANYWHERE)
    assert waiting.login(password="wrong") == b""
    waiting.lose()
    clock.advance(60)
    from popsrv.scoreboard import addressKey

    row = board.peek(addressKey("192.0.2.66"))
    assert row is not None and row.totalPending == 0 and row.failures == 3


def test_abortedAuthCountsAfterAFew() -> None:
    """
    Cancelling AUTH is free three times; then each cancel is a failed login,
    and the third such failure closes the session.
    """
    portal, _ = makePortal()
    s = Session(portal)
    for _ in range(3):
        assert s.send("AUTH LOGIN").startswith(b"+ ")
        assert s.send("*") == b"-ERR authentication cancelled\r\n"
    assert s.send("AUTH LOGIN").startswith(b"+ ")
    assert s.send("*") == REFUSED
    assert s.send("AUTH LOGIN").startswith(b"+ ")
    assert s.send("*") == REFUSED
    assert s.send("AUTH LOGIN").startswith(b"+ ")
    assert s.send("*").startswith(b"-ERR [AUTH]")
    assert s.closed


def test_queuedChecksOfClientsThatLeftAreDropped() -> None:
    """
    With the checks' queue full, a client that leaves is dropped without
    its check, and the next client's runs.
    """
    portal, _ = makePortal()
    queue = LoginQueue(concurrency=1)
    clock = Clock()
    queue.enter("203.0.113.1", lambda: False)
    leaving = Session(portal, clock=clock, loginQueue=queue)
    assert leaving.login() == b""
    staying = Session(portal, clock=clock, loginQueue=queue, peer="127.0.0.2")
    assert staying.login() == b""
    leaving.lose()
    queue.leave()
    staying.pump()
    assert staying.output().startswith(b"+OK alice has")
    assert queue.stats() == {"running": 0, "waiting": 0}


class _Waiting:
    """A checker whose verdicts wait until the test gives them."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.verdicts: List[defer.Deferred[bytes]] = []

    def requestAvatarId(self, credentials: object) -> defer.Deferred[bytes]:
        verdict: defer.Deferred[bytes] = defer.Deferred()
        self.verdicts.append(verdict)
        return verdict


def test_whileALoginWaitsTheSocketIsReadUpToALimit() -> None:
    """
    While a login waits for its verdict, the client's next lines are held
    but its socket is still read (so its leaving is noticed), until more
    than HOLD_OCTETS wait; the held lines are answered, in order, once the
    login is done.
    """
    checker = _Waiting()
    realm = MemoryRealm()
    realm.maildrop("alice").add(b"Subject: x\r\n\r\ny\r\n")
    portal = Portal(realm, [checker])
    s = Session(portal)
    assert s.send("USER alice").startswith(b"+OK")
    assert s.send("PASS secret") == b""
    noops = b"NOOP\r\n" * (HOLD_OCTETS // 6)
    assert s.feed(noops) == b""
    assert s.transport.producerState == "producing"
    assert s.feed(b"STAT\r\n" * 10) == b""
    assert s.transport.producerState == "paused"
    checker.verdicts[0].callback(b"alice")
    s.pump()
    out = s.output()
    assert out.startswith(b"+OK alice has 1 message")
    assert out.count(b"+OK\r\n") == HOLD_OCTETS // 6
    assert out.endswith(b"+OK 1 17\r\n" * 10)
    assert s.transport.producerState == "producing"


def test_aClientLeavingWhileItsLoginWaitsIsNoticed(board: Scoreboard) -> None:
    """
    A client that leaves while its login waits frees its place within the
    limits at once, and its credentials are never checked.
    """
    checker = _Waiting()
    portal = Portal(MemoryRealm(), [checker])
    queue = LoginQueue(concurrency=1)
    limits = ConnectionLimits(board, maxConnections=None, maxPerAddress=2)
    queue.enter("203.0.113.1", lambda: False)
    s = Session(portal, loginQueue=queue, limits=limits)
    s.login()
    assert s.transport.producerState == "producing"
    assert board.total() == 1
    s.lose()
    assert board.total() == 0
    queue.leave()
    assert checker.verdicts == []


def test_behindAProxyEveryDecisionUsesTheHeadersSource(board: Scoreboard) -> None:
    """
    Behind a PROXY-protocol listener, the session's log lines, its
    connection count, its penalty and the plaintext policy all know the
    client by the header's source, never by the proxy's 127.0.0.1: the
    limit of one address is reached by that address only, and a remote
    client is not taken for a local one.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.logger import capturedLogs

    from popsrv.pop3 import POP3Factory
    from popsrv.wire.proxied import ProxiedFactory

    portal, _ = makePortal()
    clock = Clock()
    penalty = AuthPenalty(board)
    factory = POP3Factory(
        portal, clock=clock, authFailureDelay=0, penalty=penalty,
        limits=ConnectionLimits(board, maxConnections=None, maxPerAddress=2),
    )
    proxied = ProxiedFactory(factory, clock)

    def connect(source: str) -> StringTransport:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        transport.protocol = proxied.buildProtocol(transport.getPeer())  # type: ignore[attr-defined]
        transport.protocol.makeConnection(transport)  # type: ignore[attr-defined]
        transport.protocol.dataReceived(f"PROXY TCP4 {source} 127.0.0.1 5555 110\r\n".encode())  # type: ignore
        return transport

    with capturedLogs() as events:
        first = [connect("192.0.2.7") for _ in range(2)]
        assert all(t.value().startswith(b"+OK") for t in first)
        over = connect("192.0.2.7")
        other = connect("192.0.2.8")
    assert over.value() == FULL
    assert other.value().startswith(b"+OK")
    peers = [(e["event"], e["peer"]) for e in events if e.get("event") in ("connect", "connection-refused")]
    assert peers == [("connect", "192.0.2.7:5555")] * 2 + [
        ("connection-refused", "192.0.2.7:5555"), ("connect", "192.0.2.8:5555"),
    ]
    session = first[0].protocol  # type: ignore[attr-defined]
    first[0].clear()
    session.dataReceived(b"USER alice\r\n")
    assert first[0].value().startswith(b"-ERR [AUTH] plaintext authentication is not allowed")
    first[0].clear()
    with capturedLogs() as events:
        session.dataReceived(b"AUTH CRAM-MD5\r\n")
        session.dataReceived(base64.b64encode(b"alice " + b"0" * 32) + b"\r\n")
        clock.advance(0.1)
    [failed] = [e for e in events if e.get("event") == "login-failed"]
    assert failed["peer"] == "192.0.2.7:5555"
    assert penalty.reserve("192.0.2.7", clock.seconds()) > clock.seconds()
    assert penalty.reserve("127.0.0.1", clock.seconds()) == clock.seconds()
