"""
The transport features popsrv uses beyond ITransport, each with its
fallback: the eager flush of a TCP connection, larger sends, no Nagle.
"""

from __future__ import annotations

from typing import List

import pytest
from twisted.internet import abstract, tcp
from twisted.internet.testing import StringTransport

from popsrv.pop3.transport import SEND_LIMIT, eagerFlusher, isClosing, streamInLargerSends, tuneForPOP3


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
