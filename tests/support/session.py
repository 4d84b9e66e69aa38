"""
Helpers for driving L{POP3Protocol} through a L{StringTransport} and a
L{Clock}: no reactor, no sockets, deterministic.
"""

from __future__ import annotations

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from popsrv.pop3 import POP3Factory
from popsrv.store.memory import MemoryRealm


class NoDelayTransport(StringTransport):
    """
    A string transport that records whether Nagle's algorithm was turned off.
    """

    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


def makePortal(users=None, realm=None):
    """
    Return a portal over a memory realm with users (name to password), and
    the realm.
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    for name, password in (users or {"alice": "secret"}).items():
        checker.addUser(name.encode(), password.encode())
    realm = realm or MemoryRealm()
    return Portal(realm, [checker]), realm


class Session:
    """
    One POP3 session over a string transport.
    """

    def __init__(self, portal, clock=None, timeout=600, token="1896", authFailureDelay=0,
                 peer="127.0.0.1", transport=None, **factoryArgs):
        self.clock = clock or Clock()
        self.factory = POP3Factory(portal, hostname="pop.example", timeout=timeout, clock=self.clock,
                                   randomToken=lambda: token, authFailureDelay=authFailureDelay, **factoryArgs)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = (transport or NoDelayTransport)(peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol.makeConnection(self.transport)
        self.greeting = self.output()

    def output(self) -> bytes:
        """
        Return (and forget) what the server sent so far.
        """
        value = self.transport.value()
        self.transport.clear()
        return value

    @property
    def messageProducer(self):
        """
        The pull producer of a message being sent, if any (the session's
        read gate, a push producer, is registered the rest of the time).
        """
        if self.transport.producer is not None and not self.transport.streaming:
            return self.transport.producer
        return None

    def pump(self) -> None:
        """
        Let a message's pull producer run to completion, as a transport with
        an always-empty send buffer would.
        """
        for _ in range(100000):
            producer = self.messageProducer
            if producer is None:
                return
            producer.resumeProducing()
        raise AssertionError("producer never finished")

    def feed(self, data: bytes) -> bytes:
        """
        Deliver raw bytes from the client; return the server's output.
        """
        self.protocol.dataReceived(data)
        self.pump()
        return self.output()

    def send(self, line: str | bytes) -> bytes:
        """
        Send one command line; return the server's output.
        """
        if isinstance(line, str):
            line = line.encode()
        return self.feed(line + b"\r\n")

    def login(self, user="alice", password="secret") -> bytes:
        """
        Log in with USER/PASS; return the PASS reply.
        """
        assert self.send(f"USER {user}").startswith(b"+OK")
        return self.send(f"PASS {password}")

    @property
    def closed(self) -> bool:
        """
        Whether the server asked to close the connection.
        """
        return self.transport.disconnecting or self.transport.disconnected

    def lose(self) -> None:
        """
        The connection is lost (the client vanished).
        """
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionLost()))
