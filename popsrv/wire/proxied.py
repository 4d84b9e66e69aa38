"""
Serving connections forwarded by a proxy that speaks the PROXY protocol
(HAProxy's C{send-proxy} or C{send-proxy-v2}).

L{ProxiedFactory} wraps a server's factory.  Each connection reads the
PROXY header first, and only then becomes a connection of the wrapped
factory: its protocol is built and connected after the header, so from its
very first event (C{connectionMade}) its transport's C{getPeer()} is the
client's address as the header gives it (a L{ProxiedAddress}), never the
proxy's.  Nothing is sent before the header is read; a connection whose
first octets are not a valid header, or that sends none within
L{PROXY_HEADER_TIMEOUT} seconds, is closed without a word, and the
operator's log says why (event C{bad-proxy-header}).

Beneath TLS: a proxy sends the header in the clear, before the client's
TLS handshake, so an implicit-TLS server wraps its TLS factory in this one
(Twisted's C{TLSMemoryBIOFactory} inside L{ProxiedFactory}).
"""

from __future__ import annotations

from typing import Optional, Union

import attr
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from popsrv.wire.proxyheader import BadProxyHeader, ProxyHeader, ProxyHeaderParser

__all__ = ["PROXY_HEADER_TIMEOUT", "ProxiedAddress", "ProxiedFactory", "ProxyProtocol"]

# A proxy sends the header as it connects: seconds to wait for it.
PROXY_HEADER_TIMEOUT = 10.0

log = Logger()


@implementer(IAddress)
@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxiedAddress:
    """
    A client's address as a proxy reported it in a PROXY header.

    It reads as the client's own address (C{type}, C{host}, C{port}), and
    also knows the proxy's connection, which carried it.

    @ivar client: the client's address, from the header.
    @ivar proxy: the address of the proxy's connection to this server.
    """

    client: Union[IPv4Address, IPv6Address]
    proxy: IAddress

    @property
    def type(self) -> str:
        """C{"TCP"}."""
        return self.client.type

    @property
    def host(self) -> str:
        """The client's IP address."""
        return self.client.host

    @property
    def port(self) -> int:
        """The client's port."""
        return self.client.port


def _describe(address: object) -> str:
    """
    An address as the log shows a peer: C{host:port}.
    """
    return f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"


@implementer(IHandshakeListener)
class ProxyProtocol(ProtocolWrapper):
    """
    One connection of a L{ProxiedFactory}: reads the PROXY header, then
    connects the wrapped factory's protocol, and is its transport.

    @ivar header: the L{ProxyHeader} once read.
    """

    factory: ProxiedFactory
    wrappedProtocol: Optional[IProtocol]  # type: ignore[assignment]  # built once the header is read

    def __init__(self, factory: ProxiedFactory, address: Optional[IAddress]) -> None:
        self.factory = factory
        self.wrappedProtocol = None
        self.header: Optional[ProxyHeader] = None
        self._parser: Optional[ProxyHeaderParser] = ProxyHeaderParser()
        self._peer: Optional[IAddress] = None
        self._destination: Optional[IAddress] = None
        self._waiting: Optional[IDelayedCall] = None

    def _connection(self) -> ITransport:
        assert self.transport is not None
        return self.transport

    def logPrefix(self) -> str:
        """The wrapped protocol's prefix (once there is one), marked as proxied."""
        wrapped = self.wrappedProtocol
        if wrapped is None:
            return type(self).__name__
        prefix = wrapped.logPrefix() if ILoggingContext.providedBy(wrapped) else type(wrapped).__name__
        return f"{prefix} (PROXY)"

    def makeConnection(self, transport: ITransport) -> None:
        """
        Take the connection, and wait for the header (the wrapped
        protocol is connected once it is read).
        """
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.protocols[self] = 1
        self._waiting = self.factory.clock.callLater(self.factory.timeout, self._noHeader)

    def dataReceived(self, data: bytes) -> None:
        """
        Read the header; pass what follows it on to the wrapped protocol.
        """
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._parser is None:
            return  # refused, closing
        try:
            parsed = self._parser.feed(data)
        except BadProxyHeader as error:
            self._refuse(str(error))
            return
        if parsed is None:
            return
        header, rest = parsed
        self._parser = None
        self._stopWaiting()
        self.header = header
        if header.source is not None:
            self._peer = ProxiedAddress(header.source, self._connection().getPeer())
            self._destination = header.destination
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self._connection().loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if rest and self.wrappedProtocol is not None and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def _refuse(self, why: str) -> None:
        """
        Close a connection that did not start with a valid header.
        """
        self._parser = None
        self._stopWaiting()
        connection = self._connection()
        log.warn(
            "closed a connection from {peer}: {why}",
            peer=_describe(connection.getPeer()), why=why, event="bad-proxy-header",
        )
        connection.loseConnection()

    def _noHeader(self) -> None:
        self._waiting = None
        self._refuse(f"no PROXY header within {self.factory.timeout:g} s")

    def _stopWaiting(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None and waiting.active():
            waiting.cancel()

    def getPeer(self) -> IAddress:
        """
        The client's address: the header's source as a L{ProxiedAddress};
        where the header gives none (a health check of the proxy's), or
        before it is read, the connection's own peer.
        """
        return self._peer if self._peer is not None else self._connection().getPeer()

    def getHost(self) -> IAddress:
        """
        The address the client connected to, as the header gives it; else
        the connection's own.
        """
        return self._destination if self._destination is not None else self._connection().getHost()

    def handshakeCompleted(self) -> None:
        """
        TLS started on the connection (STLS) finished its handshake: tell
        the wrapped protocol, if it listens.
        """
        wrapped = self.wrappedProtocol
        if wrapped is not None and IHandshakeListener.providedBy(wrapped):
            wrapped.handshakeCompleted()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The connection closed: tell the wrapped protocol, if it was
        connected.
        """
        self._stopWaiting()
        self._parser = None
        self.factory.protocols.pop(self, None)
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


class ProxiedFactory(WrappingFactory):
    """
    Wraps a server's factory: each connection reads a PROXY header first
    (see L{ProxyProtocol}).

    @ivar clock: where the header's deadline is set.
    @ivar timeout: seconds a connection may take to send its header.
    """

    protocol = ProxyProtocol
    noisy = False

    def __init__(
        self, wrappedFactory: IProtocolFactory, clock: IReactorTime, timeout: float = PROXY_HEADER_TIMEOUT,
    ) -> None:
        self.wrappedFactory = wrappedFactory
        self.protocols: dict[ProxyProtocol, int] = {}
        self.clock = clock
        self.timeout = timeout

    def logPrefix(self) -> str:
        """The wrapped factory's prefix, marked as behind a proxy."""
        wrapped = self.wrappedFactory
        prefix = wrapped.logPrefix() if ILoggingContext.providedBy(wrapped) else type(wrapped).__name__
        return f"{prefix} (PROXY)"

    def buildProtocol(self, addr: Optional[IAddress]) -> ProxyProtocol:
        """
        A connection that reads its header before the wrapped factory
        builds a protocol for it.
        """
        return ProxyProtocol(self, addr)
