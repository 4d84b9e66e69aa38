"""
Test doubles for code that embeds popsrv or implements a backend for it.

L{connect} wires an in-memory POP3 client to the real
L{popsrv.pop3.POP3Protocol} (through Twisted's in-memory transports and a
fake clock: no sockets, no reactor, no sleeping), so a test of a realm, a
checker or an L{popsrv.interfaces.IMaildrop} implementation drives them
through real POP3 in a few lines (the connection has no TLS: a factory
with TLS settings does not offer STLS over it; test STLS over real TCP)::

    from popsrv.testing import connect, memoryPortal

    portal, realm = memoryPortal({"alice": "secret"})
    realm.maildrop("alice").add(b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
    client = connect(portal)
    client.login("alice", "secret")
    assert client.retrieve(1) == b"Subject: hi\\r\\n\\r\\nhello\\r\\n"
    client.quit()
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Union

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from popsrv.pop3 import POP3Factory
from popsrv.store.memory import MemoryRealm

__all__ = ["POP3ClientError", "POP3TestClient", "connect", "memoryPortal"]


class POP3ClientError(Exception):
    """
    The server answered C{-ERR}; the exception's text is the whole reply line.
    """


class _Collector(Protocol):
    """
    The client side of the in-memory connection: keeps what it receives.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.lost = True


class _MemoryConnection:
    """
    Two C{StringTransport}s joined, and a fake clock that stands for the
    reactor: each turn (L{flush} runs turns until nothing moves) runs the
    timers that are due, delivers what each side wrote to the other, lets
    a pull producer registered by the server (a message streaming) write
    its next chunk, as a transport whose send buffer is always empty
    would, and closes both sides once either asked to close.  Nothing
    either side writes after the close arrives.

    No TLS: the transports do not provide C{ITLSTransport}, so a server
    whose factory has TLS settings does not offer STLS over them.
    """

    def __init__(self, server: Protocol, client: _Collector, clock: Clock, serverAddress: IPv4Address,
                 clientAddress: IPv4Address) -> None:
        self._server = server
        self._client = client
        self._clock = clock
        self._serverTransport = StringTransport(hostAddress=serverAddress, peerAddress=clientAddress)
        self._clientTransport = StringTransport(hostAddress=clientAddress, peerAddress=serverAddress)
        self._closed = False
        server.makeConnection(self._serverTransport)
        client.makeConnection(self._clientTransport)  # type: ignore[no-untyped-call]  # not annotated in Twisted

    def flush(self) -> None:
        """
        Run turns until nothing moves.
        """
        while self._step():
            pass

    def _step(self) -> bool:
        """
        Run one turn; return whether anything moved.
        """
        # A reactor runs the timers that are due at each turn (callLater(0)
        # included); twisted.test.iosim's pump did the same.
        self._clock.advance(0)
        if self._closed:
            self._clientTransport.clear()
            self._serverTransport.clear()
            return False
        moved = False
        toServer = self._clientTransport.value()
        if toServer:
            self._clientTransport.clear()
            self._server.dataReceived(toServer)
            moved = True
        producer = self._serverTransport.producer
        if producer is not None and not self._serverTransport.streaming:
            producer.resumeProducing()
            moved = True
        toClient = self._serverTransport.value()
        if toClient:
            self._serverTransport.clear()
            self._client.dataReceived(toClient)
            moved = True
        if self._serverTransport.disconnecting or self._clientTransport.disconnecting:
            self._closed = True
            self._server.connectionLost(Failure(ConnectionDone()))
            self._client.connectionLost(Failure(ConnectionDone()))
            moved = True
        return moved


def _text(line: Union[str, bytes]) -> bytes:
    return line.encode("utf-8") if isinstance(line, str) else line


class POP3TestClient:
    """
    A POP3 client connected in memory to a real L{popsrv.pop3.POP3Protocol}.

    @ivar server: the server-side protocol instance.
    @ivar clock: the fake clock the server's timers use; advance it to test
        timeouts.
    @ivar greeting: the server's greeting line.
    @ivar waitLimit: how far (in seconds) the client lets the fake clock run
        while it waits for a reply; the idle timeout is much further away.
    """

    waitLimit = 5.0

    def __init__(self, factory: POP3Factory, clock: Clock, peer: str = "127.0.0.1") -> None:
        self.clock = clock
        server = IPv4Address("TCP", "127.0.0.1", 110)
        client = IPv4Address("TCP", peer, 40000)
        self.server = factory.buildProtocol(client)
        self._collector = _Collector()
        self._pump = _MemoryConnection(self.server, self._collector, clock, server, client)
        self.greeting = self.readLine()

    @property
    def connected(self) -> bool:
        """
        Whether the server has not closed the connection.
        """
        self._pump.flush()
        return not self._collector.lost

    def send(self, data: Union[str, bytes]) -> None:
        """
        Send raw bytes to the server (no line end is added).
        """
        transport = self._collector.transport
        assert transport is not None
        transport.write(_text(data))
        self._pump.flush()

    def readLine(self) -> str:
        """
        Return the next line from the server, without its CRLF.

        @raise EOFError: if the server closed the connection first.
        """
        return self._readLineBytes().decode("utf-8", "replace")

    def _readLineBytes(self) -> bytes:
        buffer = self._collector.received
        while True:
            self._pump.flush()
            end = buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                return line
            if not self._waitForTimer():
                raise EOFError(f"no complete line from the server; received {bytes(buffer)!r}")

    def _waitForTimer(self) -> bool:
        """
        Wait, as a real client would, for the server's next timer (such as
        the pause before a failed login is answered), if one is due within
        L{waitLimit} seconds; return whether there was one.
        """
        now = self.clock.seconds()
        due = [call.getTime() for call in self.clock.getDelayedCalls() if call.getTime() - now <= self.waitLimit]
        if not due:
            return False
        self.clock.advance(max(0.0, min(due) - now))
        return True

    def command(self, line: Union[str, bytes]) -> str:
        """
        Send a command and return its one-line reply.

        @raise POP3ClientError: if the reply is C{-ERR}.
        """
        self.send(_text(line) + b"\r\n")
        reply = self.readLine()
        if not reply.startswith("+OK"):
            raise POP3ClientError(reply)
        return reply

    def multiline(self, line: Union[str, bytes]) -> list[bytes]:
        """
        Send a command with a multi-line reply and return the reply's lines
        after the status line, un-dot-stuffed, without line ends.
        """
        self.command(line)
        lines: List[bytes] = []
        while True:
            data = self._readLineBytes()
            if data == b".":
                return lines
            lines.append(data[1:] if data.startswith(b".") else data)

    def login(self, user: str, password: str) -> str:
        """
        Log in with USER and PASS; return the PASS reply.
        """
        self.command(f"USER {user}")
        return self.command(f"PASS {password}")

    def retrieve(self, number: int) -> bytes:
        """
        RETR a message and return it as sent (CRLF line ends), un-dot-stuffed.
        """
        return b"".join(line + b"\r\n" for line in self.multiline(f"RETR {number}"))

    def quit(self) -> str:
        """
        Send QUIT (committing deletions after a login); return its reply.
        """
        return self.command("QUIT")

    def disconnect(self) -> None:
        """
        Drop the connection without QUIT, as a client that crashes does.
        """
        transport = self._collector.transport
        assert transport is not None
        transport.loseConnection()
        self._pump.flush()


def connect(
    portal: Optional[Portal] = None,
    factory: Optional[POP3Factory] = None,
    clock: Optional[Clock] = None,
    peer: str = "127.0.0.1",
) -> POP3TestClient:
    """
    Connect a new in-memory client to a POP3 server for C{portal} (or built
    by C{factory}), and read its greeting.  The client's address is
    C{peer}: a loopback address by default, which the default login policy
    lets log in with a plaintext password without TLS.
    """
    if factory is not None:
        if not isinstance(factory.clock, Clock):
            raise TypeError("connect() needs a factory whose clock is a twisted.internet.task.Clock")
        clock = factory.clock
    elif clock is None:
        clock = Clock()
    if factory is None:
        if portal is None:
            raise TypeError("connect() needs a portal or a factory")
        factory = POP3Factory(portal, hostname="popsrv.test", clock=clock)
    return POP3TestClient(factory, clock, peer)


def memoryPortal(users: Mapping[str, str]) -> tuple[Portal, MemoryRealm]:
    """
    Return a portal for users (name to password) whose maildrops live in
    memory, and its realm, whose C{maildrop(name)} is where to add messages.
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in users.items():
        checker.addUser(name.encode("utf-8"), password.encode("utf-8"))
    realm = MemoryRealm()
    return Portal(realm, [checker]), realm

