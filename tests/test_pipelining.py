"""
PIPELINING (RFC 2449) under load: several clients each pipeline a RETR of
every message at once, over real TCP; every client gets exactly its own
replies, complete and in order, never bytes of another's.
"""

from __future__ import annotations

import socket
import threading

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from popsrv.protocol import POP3Factory
from popsrv.store.maildir import deliver
from popsrv.testing import memoryPortal

from .test_e2e import RawClient, dotStuffed, wire

CLIENTS = 4


def test_concurrentPipelinedRetrievals(launcher):
    """
    Four clients pipeline USER, PASS, RETR of all their messages (of up to
    300 KB each, so they stream in many chunks) and QUIT in one write, at
    the same time; each receives exactly the bytes of its own session.
    """
    users = {f"user{n}": f"pw{n}" for n in range(CLIENTS)}
    server = launcher.popsrv(users=users)
    expected = {}
    for n, user in enumerate(users):
        messages = [
            b"Subject: %d/%d\n\n" % (n, m) + (b".line of %s message %d\n" % (user.encode(), m)) * (m * 3000 + 1)
            for m in range(1, 6)
        ]
        for message in messages:
            deliver(server.maildir(user), message)
        replies = b"".join(
            b"+OK %d octets\r\n" % len(wire(message)) + dotStuffed(wire(message)) + b".\r\n" for message in messages
        )
        expected[user] = (messages, replies)

    received = {}

    def session(user: str) -> None:
        messages, _ = expected[user]
        with RawClient(server.port, timeout=60) as client:
            greeting = client.readLine()
            commands = b"USER %s\r\nPASS %s\r\n" % (user.encode(), users[user].encode())
            commands += b"".join(b"RETR %d\r\n" % m for m in range(1, len(messages) + 1)) + b"QUIT\r\n"
            client.sock.sendall(commands)
            received[user] = (greeting, client.readUntilClosed())

    threads = [threading.Thread(target=session, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert sorted(received) == sorted(users)
    for user, (greeting, data) in received.items():
        messages, replies = expected[user]
        assert greeting.startswith(b"+OK")
        total = sum(len(wire(message)) for message in messages)
        head = b"+OK send your password\r\n+OK %s has 5 messages (%d octets)\r\n" % (user.encode(), total)
        assert data.startswith(head)
        body = data[len(head):]
        assert body[: len(replies)] == replies
        assert body[len(replies):] == b"+OK popsrv signing off (5 messages left)\r\n"


def test_repliesLeaveWithinTheReadThatAskedForThem() -> None:
    """
    Over TCP, the replies to the commands of one read are sent before
    C{dataReceived} returns, not at the reactor's next turn: the client can
    read them although no reactor runs here.
    """
    reactor = MemoryReactorClock()
    portal, _ = memoryPortal({"alice": "secret"})
    factory = POP3Factory(portal, hostname="test", clock=reactor, authFailureDelay=0)
    serverSocket, clientSocket = socket.socketpair()
    clientSocket.settimeout(5)
    try:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1110))

        class ServerPort:
            _realPortNumber = 1110

            def _getLogPrefix(self, factory):
                return "test"

        transport = tcp.Server(
            serverSocket, protocol, ("127.0.0.1", 50000), ServerPort(), 1, reactor
        )
        protocol.makeConnection(transport)
        transport.doWrite()
        assert clientSocket.recv(1000).startswith(b"+OK popsrv ready")
        protocol.dataReceived(b"CAPA\r\nUSER alice\r\n")
        received = b""
        while not (b"\r\n.\r\n+OK" in received and received.endswith(b"\r\n")):
            received += clientSocket.recv(1000)
        assert received.startswith(b"+OK capability list follows\r\n")
        assert transport.dataBuffer == b"" and not transport._tempDataLen
    finally:
        serverSocket.close()
        clientSocket.close()
