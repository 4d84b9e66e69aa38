"""
Tests of L{popsrv.wire.proxied}: a connection reads its PROXY header before
its protocol is built and connected, so that protocol sees the client's
address from its first event; a connection without a valid header is
closed unheard.  Driven without a reactor (C{StringTransport}, C{Clock}).
"""

from __future__ import annotations

from typing import List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from popsrv.wire.proxied import PROXY_HEADER_TIMEOUT, ProxiedAddress, ProxiedFactory, ProxyProtocol

PROXY_PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HEADER = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 110\r\n"


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """
    Records what happens to it, and whom its transport says it talks to
    when it is connected.
    """

    def __init__(self, built: List[Recorder], addr: Optional[IAddress]) -> None:
        self.addr = addr
        self.events: List[object] = []
        self.received = b""
        built.append(self)

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.events.append(("connected", self.transport.getPeer()))
        self.transport.write(b"+OK hello\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.events.append("lost")

    def handshakeCompleted(self) -> None:
        self.events.append("handshake")


class RecorderFactory(Factory):
    """Builds L{Recorder}s, or none when C{refuse} is set."""

    def __init__(self) -> None:
        self.built: List[Recorder] = []
        self.refuse = False

    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[Recorder]:  # type: ignore[override]
        return None if self.refuse else Recorder(self.built, addr)


def connect() -> tuple[RecorderFactory, ProxyProtocol, StringTransport, Clock]:
    """A proxied connection from the proxy at L{PROXY_PEER}, before any octet."""
    wrapped, clock = RecorderFactory(), Clock()
    factory = ProxiedFactory(wrapped, clock)
    protocol = factory.buildProtocol(PROXY_PEER)
    transport = StringTransport(peerAddress=PROXY_PEER, hostAddress=IPv4Address("TCP", "127.0.0.1", 1110))
    protocol.makeConnection(transport)
    return wrapped, protocol, transport, clock


def test_theProtocolIsConnectedAfterTheHeader() -> None:
    """
    Nothing is built, connected or sent before the header is complete;
    then the protocol is built for the client's address, connected, sees
    the client as its peer from its first event, and gets what followed
    the header.
    """
    wrapped, protocol, transport, _ = connect()
    protocol.dataReceived(HEADER[:20])
    assert wrapped.built == [] and transport.value() == b""
    protocol.dataReceived(HEADER[20:] + b"CAPA\r\n")
    [recorder] = wrapped.built
    client = ProxiedAddress(IPv4Address("TCP", "192.0.2.7", 5555), PROXY_PEER)
    assert recorder.addr == client
    assert recorder.events == [("connected", client)]
    assert (client.type, client.host, client.port) == ("TCP", "192.0.2.7", 5555)
    assert recorder.received == b"CAPA\r\n"
    assert transport.value() == b"+OK hello\r\n"
    assert protocol.getHost() == IPv4Address("TCP", "127.0.0.1", 110)
    protocol.dataReceived(b"QUIT\r\n")
    assert recorder.received == b"CAPA\r\nQUIT\r\n"
    protocol.connectionLost(Failure(Exception("done")))
    assert recorder.events[-1] == "lost"


def test_aHeaderWithoutAddressLeavesTheConnectionsOwn() -> None:
    """
    A header without a TCP source (a proxy's health check: v1 UNKNOWN) leaves
    the connection's own addresses.
    """
    wrapped, protocol, transport, _ = connect()
    protocol.dataReceived(b"PROXY UNKNOWN\r\n")
    assert wrapped.built[0].events == [("connected", PROXY_PEER)]
    assert protocol.getHost() == transport.getHost()


def test_aBadHeaderIsClosedUnheard() -> None:
    """
    A connection that starts with anything but a header is closed without
    a word, its protocol never built, and the operator is told why.
    """
    wrapped, protocol, transport, clock = connect()
    with capturedLogs() as events:
        protocol.dataReceived(b"USER alice\r\n")
    assert transport.disconnecting and transport.value() == b""
    assert wrapped.built == []
    [event] = [e for e in events if e.get("event") == "bad-proxy-header"]
    assert event["why"] == "no PROXY header" and event["peer"] == "127.0.0.1:40000"
    protocol.dataReceived(b"PASS secret\r\n")
    protocol.connectionLost(Failure(Exception("closed")))
    assert wrapped.built == [] and clock.getDelayedCalls() == []


def test_noHeaderInTimeIsClosed() -> None:
    """
    A connection that sends no header within L{PROXY_HEADER_TIMEOUT} is
    closed; one whose header comes in time is not.
    """
    wrapped, protocol, transport, clock = connect()
    with capturedLogs() as events:
        clock.advance(PROXY_HEADER_TIMEOUT - 0.1)
        assert not transport.disconnecting
        clock.advance(0.1)
    assert transport.disconnecting and wrapped.built == []
    assert [e["why"] for e in events if e.get("event") == "bad-proxy-header"] == ["no PROXY header within 10 s"]

    wrapped, protocol, transport, clock = connect()
    protocol.dataReceived(HEADER)
    assert clock.getDelayedCalls() == []
    clock.advance(PROXY_HEADER_TIMEOUT * 2)
    assert not transport.disconnecting


def test_lostBeforeTheHeader() -> None:
    """
    A connection lost before its header ends quietly: no protocol, no
    timer left.
    """
    wrapped, protocol, _, clock = connect()
    protocol.dataReceived(HEADER[:10])
    protocol.connectionLost(Failure(Exception("gone")))
    assert wrapped.built == [] and clock.getDelayedCalls() == []


def test_aFactoryThatBuildsNothingClosesTheConnection() -> None:
    """
    If the wrapped factory builds no protocol for the client, the
    connection is closed.
    """
    wrapped, protocol, transport, _ = connect()
    wrapped.refuse = True
    protocol.dataReceived(HEADER)
    assert transport.disconnecting


def test_noDataAfterTheProtocolClosed() -> None:
    """
    What followed the header is not handed to a protocol that closed the
    connection as it was made (a connection limit's refusal).
    """

    class Closer(Recorder):
        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.loseConnection()

    wrapped, protocol, transport, _ = connect()
    wrapped.buildProtocol = lambda addr: Closer(wrapped.built, addr)  # type: ignore[method-assign]
    protocol.dataReceived(HEADER + b"USER alice\r\n")
    assert transport.disconnecting and wrapped.built[0].received == b""


def test_handshakeCompletedIsPassedOn() -> None:
    """
    A TLS handshake finished beneath the wrapper (STLS) reaches the
    protocol.
    """
    wrapped, protocol, _, _ = connect()
    protocol.handshakeCompleted()  # before the header: nobody to tell
    protocol.dataReceived(HEADER)
    protocol.handshakeCompleted()
    assert wrapped.built[0].events[-1] == "handshake"


def test_logPrefix() -> None:
    """
    The log prefix names the wrapped protocol and factory, marked as
    proxied.
    """
    wrapped, protocol, _, clock = connect()
    assert protocol.logPrefix() == "ProxyProtocol"
    protocol.dataReceived(HEADER)
    assert protocol.logPrefix() == "Recorder (PROXY)"
    assert ProxiedFactory(wrapped, clock).logPrefix() == "RecorderFactory (PROXY)"


def test_interfaces() -> None:
    """
    A proxied address is an C{IAddress}; the wrapper passes TLS handshakes
    on as an C{IHandshakeListener}.
    """
    from zope.interface.verify import verifyObject

    _, protocol, _, _ = connect()
    assert verifyObject(IHandshakeListener, protocol)
    assert verifyObject(IAddress, ProxiedAddress(IPv4Address("TCP", "192.0.2.7", 5555), PROXY_PEER))
