"""
PIPELINING (RFC 2449) under load: several clients each pipeline a RETR of
every message at once, over real TCP; every client gets exactly its own
replies, complete and in order, never bytes of another's.
"""

from __future__ import annotations

import socket
import threading
import time

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from popsrv.pop3 import POP3Factory
from popsrv.store.maildir import deliver
from popsrv.testing import memoryPortal
from tests.support.wire import RawClient, dotStuffed, wire

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


class _ServerPort:
    """
    What a TCP server connection asks of its listening port.
    """

    _realPortNumber = 1110

    def _getLogPrefix(self, factory):
        return "test"


def serveOver(serverSocket: socket.socket, factory: POP3Factory, reactor):
    """
    Serve POP3 over one end of a socket pair, as a real TCP connection of
    C{reactor} (which need not run: the test calls C{doWrite} itself);
    return the protocol and its transport.
    """
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1110))
    transport = tcp.Server(serverSocket, protocol, ("127.0.0.1", 50000), _ServerPort(), 1, reactor)
    protocol.makeConnection(transport)
    return protocol, transport


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
        protocol, transport = serveOver(serverSocket, factory, reactor)
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


def test_manyPipelinedRetrievalsOverTCPDoNotNest() -> None:
    """
    A hundred pipelined RETRs of a message larger than a read chunk, sent
    in one write to a client that reads as fast as it can, are all
    answered: sending one reply's end runs the next command, which must not
    start a flush within the flush.
    """
    reactor = MemoryReactorClock()
    portal, realm = memoryPortal({"alice": "secret"})
    body = b"Subject: pipelined\r\n\r\n" + b"y" * 300000 + b"\r\n"
    realm.maildrop("alice").add(body)
    factory = POP3Factory(portal, hostname="test", clock=reactor, authFailureDelay=0)
    serverSocket, clientSocket = socket.socketpair()
    # Room for whole replies, so that each send empties the buffer and
    # resumes the message's producer at once.
    for end, option in ((serverSocket, socket.SO_SNDBUF), (clientSocket, socket.SO_RCVBUF)):
        end.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
    serverSocket.setblocking(False)
    received = bytearray()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                data = clientSocket.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        protocol, transport = serveOver(serverSocket, factory, reactor)
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\n")
        protocol.dataReceived(b"RETR 1\r\n" * 100 + b"NOOP\r\n")
        deadline = time.monotonic() + 30
        # Stand in for the reactor: write whenever the transport wants to.
        while not received.endswith(b".\r\n+OK\r\n"):
            assert time.monotonic() < deadline, f"only {received.count(b'+OK ')} replies"
            if transport in reactor.writers or transport._tempDataLen or transport.dataBuffer:
                transport.doWrite()
            else:
                time.sleep(0.001)
        assert received.count(b"+OK %d octets\r\n" % len(wire(body))) == 100
    finally:
        done.set()
        serverSocket.close()
        clientSocket.close()


def maildirFactory(tmp_path, reactor, messages) -> POP3Factory:
    """
    A factory for user alice (password secret) whose Maildir holds
    C{messages}, served without a thread pool (everything inline).
    """
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.portal import Portal

    from popsrv.store.realm import MaildirRealm

    for message in messages:
        deliver(str(tmp_path / "alice"), message)
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    return POP3Factory(Portal(MaildirRealm(str(tmp_path)), [checker]), hostname="test", clock=reactor,
                       authFailureDelay=0)


def countingSends(transport) -> list:
    """
    Count the sends of a TCP transport (their sizes).
    """
    sends: list = []
    writeSomeData = transport.writeSomeData

    def counted(data):
        written = writeSomeData(data)
        sends.append(written)
        return written

    transport.writeSomeData = counted
    return sends


def test_smallPipelinedRetrievalsLeaveInFewSends(tmp_path) -> None:
    """
    Fifty RETRs and NOOPs of small messages pipelined in one read are read
    whole and answered in order, in one send per 64 KiB of replies or so,
    without the connection ever being registered for writing.
    """
    from popsrv.pop3.protocol import HELD_OCTETS

    reactor = MemoryReactorClock()
    messages = [b"Subject: %d\n\n.dot line %d\nend" % (n, n) + b"x" * 2000 for n in range(50)]
    factory = maildirFactory(tmp_path, reactor, messages)
    serverSocket, clientSocket = socket.socketpair()
    for end, option in ((serverSocket, socket.SO_SNDBUF), (clientSocket, socket.SO_RCVBUF)):
        end.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
    clientSocket.settimeout(5)
    try:
        protocol, transport = serveOver(serverSocket, factory, reactor)
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\n")
        sends = countingSends(transport)
        protocol.dataReceived(b"".join(b"RETR %d\r\nNOOP\r\n" % n for n in range(1, 51)))
        expected = b"".join(
            b"+OK %d octets\r\n" % len(wire(message)) + dotStuffed(wire(message)) + b".\r\n+OK\r\n"
            for message in messages
        )
        assert transport not in reactor.writers
        assert not transport.dataBuffer and not transport._tempDataLen
        assert sum(sends) == len(expected)
        assert len(sends) <= len(expected) // HELD_OCTETS + 1
        received = b""
        while not received.endswith(expected):
            received += clientSocket.recv(1 << 20)
        # The session ends (its Maildir is unlocked).
        protocol.connectionLost(Failure(ConnectionDone()))
    finally:
        serverSocket.close()
        clientSocket.close()


def test_aClientThatDoesNotReadStopsBeingAnswered(tmp_path) -> None:
    """
    A client that pipelines a thousand RETRs of a 60 KB message and reads
    nothing gets a bounded amount of replies: once the socket's buffer and
    the transport's fill, the rest of its commands wait unread.
    """
    reactor = MemoryReactorClock()
    message = b"Subject: big\n\n" + b"z" * 60000 + b"\n"
    factory = maildirFactory(tmp_path, reactor, [message])
    serverSocket, clientSocket = socket.socketpair()
    serverSocket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    clientSocket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        protocol, transport = serveOver(serverSocket, factory, reactor)
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\n")
        sends = countingSends(transport)
        protocol.dataReceived(b"RETR 1\r\n" * 1000)
        assert protocol.paused
        pending = len(transport.dataBuffer) + transport._tempDataLen
        assert sum(sends) + pending < 20 * len(message)
        assert pending < 4 * len(message)
        # The session ends (its Maildir is unlocked).
        protocol.connectionLost(Failure(ConnectionDone()))
    finally:
        serverSocket.close()
        clientSocket.close()


class _BreaksAfterAChunk:
    """
    A stored message's file whose first read works and whose second fails
    (an I/O error once part of the message is sent).
    """

    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int) -> bytes:
        self.reads += 1
        if self.reads == 1:
            return b"Subject: x\r\n\r\n" + b"a" * (size - 14)
        raise OSError(5, "Input/output error")

    def close(self) -> None:
        pass


def test_nothingPipelinedBehindABrokenMessageIsAnsweredOrApplied() -> None:
    """
    When a message fails after part of it was sent, the connection breaks
    off: the commands pipelined behind it (STAT, DELE, QUIT) get no reply
    and change nothing: the message that was not delivered stays.
    """
    from popsrv.wire.streaming import sendFile

    reactor = MemoryReactorClock()
    portal, realm = memoryPortal({"alice": "secret"})
    maildrop = realm.maildrop("alice")
    maildrop.add(b"Subject: one\r\n\r\n" + b"b" * 1000 + b"\r\n", uid="one")
    maildrop.add(b"Subject: two\r\n\r\nsecond\r\n", uid="two")
    maildrop.sendMessage = lambda uid, consumer: sendFile(_BreaksAfterAChunk(), consumer, 4096)  # type: ignore
    factory = POP3Factory(portal, hostname="test", clock=reactor, authFailureDelay=0)
    serverSocket, clientSocket = socket.socketpair()
    clientSocket.settimeout(5)
    try:
        protocol, transport = serveOver(serverSocket, factory, reactor)
        protocol.dataReceived(b"USER alice\r\nPASS secret\r\n")
        transport.doWrite()
        before = b""
        while not before.endswith(b"octets)\r\n"):
            before += clientSocket.recv(1 << 16)
        protocol.dataReceived(b"RETR 1\r\nSTAT\r\nDELE 1\r\nQUIT\r\n")
        assert transport._aborting
        if transport.dataBuffer or transport._tempDataLen:
            transport.doWrite()
        reactor.advance(0)
        clientSocket.setblocking(False)
        try:
            received = clientSocket.recv(1 << 20)
        except BlockingIOError:
            received = b""
        assert received.startswith(b"+OK") and b"aaaa" in received
        assert b"+OK 2" not in received and b"deleted" not in received and b"signing off" not in received
        assert sorted(maildrop.messages) == ["one", "two"]
    finally:
        serverSocket.close()
        clientSocket.close()
