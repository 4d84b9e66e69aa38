"""
Listening on the endpoints of C{--listen}: L{ListeningService}, the default
listen backlog of TCP endpoints (L{withDefaultBacklog}), listeners behind
HAProxy (C{haproxy:}, see L{serverEndpoint}), implicit TLS over any endpoint
(C{tls:}, L{ImplicitTLSEndpoint}), and how a listening address is written in
the log.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLContextFactory,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from popsrv.tls import TLSSettings
from popsrv.wire.proxied import ProxiedFactory

__all__ = [
    "DEFAULT_BACKLOG",
    "TLS_PREFIX",
    "ImplicitTLSEndpoint",
    "ListeningService",
    "describeAddress",
    "serverEndpoint",
    "splitTLS",
    "sslFiles",
    "tcpArgument",
    "withDefaultBacklog",
]

# The listen queue of a TCP listener whose description gives no backlog:
# room for thousands of clients connecting at the same moment (Twisted's 50
# overflows at a few hundred, and the connections beyond wait for SYN
# retransmissions, seconds each, or hang). The kernel caps it at
# net.core.somaxconn (4096 by default since Linux 5.4).
DEFAULT_BACKLOG = 4096
TLS_PREFIX = "tls:"

# Where each TCP endpoint type takes its port and its backlog among its
# positional arguments (after the type): tcp:PORT:INTERFACE:BACKLOG,
# tcp6:PORT:BACKLOG, ssl:PORT:PRIVATEKEY:CERTKEY:SSLMETHOD:INTERFACE:BACKLOG.
_POSITIONS = {
    "tcp": {"port": 0, "backlog": 2},
    "tcp6": {"port": 0, "backlog": 1},
    "ssl": {"port": 0, "backlog": 5},
}

log = Logger()


def _fields(description: str) -> List[tuple[Optional[str], str]]:
    """
    Split an endpoint description as Twisted does: fields between
    unescaped colons, each C{(name, value)} for C{name=value} or C{(None,
    value)} for a positional one; a backslash escapes the next character.
    """
    fields: List[tuple[Optional[str], str]] = []
    name: Optional[str] = None
    current = ""
    characters = iter(description)
    for character in characters:
        if character == "\\":
            current += next(characters, "")
        elif character == ":":
            fields.append((name, current))
            name, current = None, ""
        elif character == "=" and name is None:
            name, current = current, ""
        else:
            current += character
    fields.append((name, current))
    return fields


def _tcpListener(description: str) -> Optional[tuple[str, List[tuple[Optional[str], str]]]]:
    """
    The type (C{tcp}, C{tcp6} or C{ssl}) and the arguments of a TCP
    listener's description, also behind C{haproxy:}; C{None} for any other.
    """
    fields = _fields(description)
    # Twisted matches plugins' names (haproxy, tcp6) in any case, and its
    # own types (tcp, ssl) only in lower case.
    while len(fields) > 1 and fields[0][0] is None and fields[0][1].lower() == "haproxy":
        fields = fields[1:]
    name, kind = fields[0]
    if kind.lower() == "tcp6":
        kind = "tcp6"
    if name is not None or kind not in _POSITIONS:
        return None
    return kind, fields[1:]


def tcpArgument(description: str, argument: str) -> Optional[str]:
    """
    The C{port} or C{backlog} that a TCP listener's description (C{tcp:},
    C{tcp6:}, C{ssl:}, also behind C{haproxy:}) gives by name or by
    position, unescaped; C{None} if it gives none or is another listener.
    """
    listener = _tcpListener(description)
    if listener is None:
        return None
    kind, arguments = listener
    for name, value in arguments:
        if name == argument:
            return value
    positional = [value for name, value in arguments if name is None]
    position = _POSITIONS[kind][argument]
    return positional[position] if len(positional) > position else None


def sslFiles(description: str) -> Optional[tuple[str, str]]:
    """
    The private key and certificate files of an C{ssl:} listener's
    description (also behind C{haproxy:}), by name or by position
    (C{ssl:PORT:PRIVATEKEY:CERTKEY}), with Twisted's defaults (the key in
    C{server.pem}, the certificate in the key's file); C{None} for any
    other listener.
    """
    listener = _tcpListener(description)
    if listener is None or listener[0] != "ssl":
        return None
    named = {name: value for name, value in listener[1] if name is not None}
    positional = [value for name, value in listener[1] if name is None]
    privateKey = named.get("privateKey", positional[1] if len(positional) > 1 else "server.pem")
    certKey = named.get("certKey", positional[2] if len(positional) > 2 else privateKey)
    return privateKey, certKey


def withDefaultBacklog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    Return a C{--listen} description with C{backlog=BACKLOG} added if it is
    a TCP listener (C{tcp:}, C{tcp6:}, C{ssl:}, also behind C{haproxy:})
    that does not set its backlog; any other description as it is.
    """
    if _tcpListener(description) is None or tcpArgument(description, "backlog") is not None:
        return description
    return f"{description}:backlog={backlog}"


class _ProxiedReactor:
    """
    A reactor for building the endpoint behind a C{haproxy:} prefix: it
    listens where the reactor it wraps would, with every connection reading
    a PROXY header first (L{ProxiedFactory}).  Where the endpoint would
    listen with TLS (C{ssl:}), the header is read beneath TLS, as a proxy
    sends it: in the clear, before the client's handshake.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def _proxied(self, factory: Any) -> ProxiedFactory:
        return ProxiedFactory(factory, self._reactor)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> IListeningPort:
        """Listen on TCP, each connection reading a PROXY header first."""
        listening: IListeningPort = self._reactor.listenTCP(port, self._proxied(factory), backlog, interface)
        return listening

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = "",
    ) -> IListeningPort:
        """Listen on TCP with TLS above the PROXY header."""
        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface)

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0) -> Any:
        """Listen on a UNIX socket, each connection reading a PROXY header first."""
        return self._reactor.listenUNIX(address, self._proxied(factory), backlog, mode, wantPID)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> IListeningPort:
        """Adopt a listening socket, each connection reading a PROXY header first."""
        listening: IListeningPort = self._reactor.adoptStreamPort(fileDescriptor, addressFamily, self._proxied(factory))
        return listening

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("listen", "adopt")):
            # A way of listening that would bypass the PROXY header.
            raise AttributeError(f"haproxy: cannot wrap {name}")
        return getattr(self._reactor, name)


def _behindProxy(description: str) -> Optional[str]:
    """
    The rest of a description that starts with C{haproxy:} (in any case,
    as Twisted matches its plugins' names), else C{None}.
    """
    head, current = "", 0
    while current < len(description):
        character = description[current]
        if character == "\\":
            head += description[current + 1:current + 2]
            current += 2
            continue
        if character == ":":
            break
        head += character
        current += 1
    else:
        return None
    return description[current + 1:] if head.lower() == "haproxy" else None


def serverEndpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    The endpoint of a C{--listen} description, with L{DEFAULT_BACKLOG} for
    TCP listeners that do not set theirs.

    Behind C{haproxy:}, each connection reads a PROXY header before its
    protocol is even built, and that protocol's transport reports the
    header's source as the peer from the start (see
    L{popsrv.wire.proxied}); for C{haproxy:ssl:}, the header comes before
    TLS, as HAProxy sends it.  (Twisted's own C{haproxy:} endpoint connects
    the protocol before the header is read, so the greeting and the first
    C{getPeer()} saw the proxy; and it expects the header inside TLS.)
    """
    inner = _behindProxy(description)
    if inner is not None:
        return serverEndpoint(_ProxiedReactor(reactor), inner)
    endpoint: IStreamServerEndpoint = endpoints.serverFromString(reactor, withDefaultBacklog(description))
    return endpoint


def splitTLS(description: str) -> Tuple[str, bool]:
    """
    Split a C{--listen} description into the endpoint under a C{tls:}
    prefix (implicit TLS, with C{--tls-cert} and C{--tls-key}, over any
    stream endpoint: C{tls:systemd:domain=INET:name=pop3s}) and whether
    there was one.
    """
    if description[:len(TLS_PREFIX)].lower() == TLS_PREFIX:
        return description[len(TLS_PREFIX):], True
    return description, False


@implementer(IOpenSSLContextFactory)
class _CurrentTLS:
    """
    The TLS settings in force, as an OpenSSL context factory: asked at
    each connection, so a certificate reloaded on SIGHUP serves the next
    connection.
    """

    def __init__(self, tls: TLSSettings) -> None:
        self._tls = tls

    def getContext(self) -> Any:
        """The OpenSSL context of the certificate in force."""
        return self._tls.options.getContext()


@implementer(IStreamServerEndpoint)
class ImplicitTLSEndpoint:
    """
    Implicit TLS (RFC 8314, port 995) over another stream endpoint, with
    the server's reloadable TLS settings; C{ssl:} listeners cannot take
    their socket from systemd, nor reload their certificate.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, tls: TLSSettings) -> None:
        self._endpoint = endpoint
        self._tls = tls

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen with TLS wrapped around each connection."""
        wrapped = TLSMemoryBIOFactory(_CurrentTLS(self._tls), False, protocolFactory)
        return self._endpoint.listen(wrapped)


def describeAddress(address: object) -> str:
    """
    Return a listening address as C{host:port} (or a path for UNIX sockets).
    """
    if hasattr(address, "port"):
        host = str(getattr(address, "host", ""))
        port = address.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(getattr(address, "name", address))


class ListeningService(Service):
    """
    Listens on one endpoint while the service runs.

    Listening starts in C{privilegedStartService}, before twistd drops root,
    so privileged ports work; a failure to listen is raised at once, so a
    busy port stops C{twistd} with a clear error.

    (Not Twisted's C{StreamServerEndpointService}: popsrv logs the address
    it bound, port 0 resolved, and hands the port to C{onListening} for the
    demo's instructions and the worker pool; that service keeps its port
    only in a private Deferred.)

    @param logFormat: the log line of the address bound, C{{address}} in
        it, and C{event} its C{event} key.
    @ivar port: the C{IListeningPort} once listening.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        onListening: Optional[Callable[[IListeningPort], None]] = None,
        logFormat: str = "popsrv listening on {address}",
        event: str = "listening",
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: Optional[IListeningPort] = None
        self._onListening = onListening
        self._logFormat = logFormat
        self._event = event
        self._waiting: Optional[Deferred[IListeningPort]] = None

    def privilegedStartService(self) -> None:
        """
        Start listening.
        """
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """
        Start listening, unless already listening.
        """
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._waiting is not None:
            return
        self._waiting = self.endpoint.listen(self.factory)
        failures: List[Failure] = []
        self._waiting.addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()
        if not self._waiting.called:
            # A failure that comes later cannot stop the start any more;
            # log it for the operator.
            self._waiting.addErrback(lambda failure: log.failure("could not listen", failure))

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = describeAddress(port.getHost())
        log.info(self._logFormat, address=address, event=self._event)
        if self._onListening is not None:
            self._onListening(port)

    def stopService(self) -> Optional[Deferred[None]]:
        """
        Stop listening.
        """
        super().stopService()
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.cancel()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


