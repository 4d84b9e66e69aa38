"""
The transport features popsrv uses beyond ITransport, each with its
fallback: the eager flush of a TCP connection, larger sends, no Nagle.
"""

from __future__ import annotations

from typing import List

import pytest
from twisted.internet import abstract, tcp
from twisted.internet.testing import StringTransport

from popsrv.pop3.transport import (
    SEND_LIMIT,
    directWriter,
    eagerFlusher,
    isClosing,
    streamInLargerSends,
    tuneForPOP3,
)


def bareConnection(pending: bytes = b"") -> tcp.Connection:
    """
    A TCP connection object without a socket, holding C{pending} to send.
    """
    connection = tcp.Connection.__new__(tcp.Connection)
    connection._tempDataLen = 0
    connection.dataBuffer = pending
    return connection


def test_otherTransportsGetANoOp() -> None:
    """
    A transport that is not a TCP connection is left to the reactor.
    """
    transport = StringTransport()
    transport.write(b"held")
    flush = tuneForPOP3(transport)
    flush()
    assert transport.value() == b"held"
    streamInLargerSends(transport)
    assert not hasattr(transport, "SEND_LIMIT")


def test_tcpConnectionIsWrittenAtOnce(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With data pending, the flusher writes it now, once, never from within
    itself, and not on a closing connection or with nothing pending.
    """
    connection = bareConnection(b"reply")
    calls: List[str] = []
    flush = eagerFlusher(connection)

    def doWrite() -> None:
        calls.append("write")
        flush()  # as a producer resumed by the write would

    monkeypatch.setattr(connection, "doWrite", doWrite, raising=False)
    flush()
    assert calls == ["write"]
    connection.dataBuffer = b""
    flush()
    assert calls == ["write"]
    connection.dataBuffer = b"more"
    connection.disconnecting = True
    flush()
    assert calls == ["write"]


def test_fallsBackWhenTwistedChanges(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A TCP connection without the attributes the flusher relies on (a
    different Twisted) gets the reactor's ordinary writing.
    """
    connection = tcp.Connection.__new__(tcp.Connection)
    connection.dataBuffer = b"pending"
    eagerFlusher(connection)()  # no _tempDataLen: reading it would raise
    monkeypatch.delattr(abstract.FileDescriptor, "doWrite")
    eagerFlusher(bareConnection(b"pending"))()  # no doWrite: calling it would raise


def test_largerSends() -> None:
    """
    A TCP connection sends up to SEND_LIMIT octets per turn.
    """
    connection = bareConnection()
    streamInLargerSends(connection)
    assert connection.SEND_LIMIT == SEND_LIMIT


def test_isClosing() -> None:
    """
    Closing or closed transports say so; one that cannot say is open.
    """
    transport = StringTransport()
    assert not isClosing(transport)
    transport.loseConnection()
    assert isClosing(transport)
    assert not isClosing(object())


def directConnection(monkeypatch: pytest.MonkeyPatch, accepts: object = None):
    """
    A bare TCP connection whose sends take C{accepts} octets (all, if
    C{None}; an exception instance, as Twisted returns for a lost
    connection); return it with the lists of what it sent and of what went
    through its ordinary C{write}.
    """
    connection = bareConnection()
    connection.connected = True
    connection.disconnected = False
    connection.disconnecting = False
    connection.producer = None
    connection.streamingProducer = False
    connection.TLS = False
    sent: List[bytes] = []
    written: List[bytes] = []

    def writeSomeData(data: bytes) -> object:
        taken = len(data) if accepts is None else accepts
        if isinstance(taken, int):
            sent.append(bytes(data[:taken]))
        return taken

    monkeypatch.setattr(connection, "writeSomeData", writeSomeData, raising=False)
    monkeypatch.setattr(connection, "write", written.append, raising=False)
    return connection, sent, written


def test_directWriterSendsAtOnceWhenNothingIsPending(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A TCP connection that holds nothing to send sends a reply at once,
    without Twisted's write (which would register it for writing).
    """
    connection, sent, written = directConnection(monkeypatch)
    directWriter(connection)(b"+OK\r\n")
    assert sent == [b"+OK\r\n"] and written == []


@pytest.mark.parametrize("accepts, rest", [(3, b"\r\n"), (0, b"+OK\r\n"), (ConnectionError(), b"+OK\r\n")])
def test_directWriterLeavesWhatIsNotSentToTwisted(monkeypatch: pytest.MonkeyPatch, accepts, rest) -> None:
    """
    What a send does not take (part, nothing, or all of it after an error)
    goes through the transport's own write, which sends it later or meets
    the error again and closes the connection.
    """
    connection, _, written = directConnection(monkeypatch, accepts)
    directWriter(connection)(b"+OK\r\n")
    assert written == [rest]


@pytest.mark.parametrize(
    "state", ["pending", "temporary", "closing", "lost", "disconnected", "aborted", "tls", "pull producer"]
)
def test_directWriterQueuesBehindOthers(monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    """
    Data already waiting, a closing, lost or aborted connection (whose
    socket may be gone: Twisted's write drops what it is given), TLS, or a
    pull producer registered (which Twisted resumes only as its buffer
    empties) leave a reply to Twisted's write.
    """
    connection, sent, written = directConnection(monkeypatch)
    if state == "lost":
        connection.connected = False
    elif state == "disconnected":
        connection.disconnected = True
    elif state == "aborted":
        connection._aborting = True
    elif state == "pending":
        connection.dataBuffer = b"earlier"
    elif state == "temporary":
        connection._tempDataLen = 7
    elif state == "closing":
        connection.disconnecting = True
    elif state == "tls":
        connection.TLS = True
    else:
        connection.producer = object()
    directWriter(connection)(b"+OK\r\n")
    assert sent == [] and written == [b"+OK\r\n"]
    connection.producer, connection.streamingProducer = object(), True
    connection.dataBuffer, connection._tempDataLen, connection.disconnecting, connection.TLS = b"", 0, False, False
    connection.connected, connection.disconnected, connection._aborting = True, False, False
    directWriter(connection)(b"+OK\r\n")
    assert sent == [b"+OK\r\n"]


def test_directWriterFallsBackForOtherTransports(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Other transports, and a TCP connection without the attributes relied
    on (another Twisted), are written to through their own write.
    """
    transport = StringTransport()
    directWriter(transport)(b"+OK\r\n")
    assert transport.value() == b"+OK\r\n"
    for klass in tcp.Connection.__mro__:
        if "TLS" in vars(klass):
            monkeypatch.delattr(klass, "TLS")
    connection = bareConnection()
    written: List[bytes] = []
    monkeypatch.setattr(connection, "write", written.append, raising=False)
    directWriter(connection)(b"+OK\r\n")  # no socket: a send would raise
    assert written == [b"+OK\r\n"]
