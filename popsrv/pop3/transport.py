"""
What popsrv asks of a transport beyond C{ITransport}, each behind one small
function with a fallback for transports that cannot do it.

Twisted has no public API to send what a TCP connection holds right away,
nor to raise how much it sends per turn; these functions use
C{twisted.internet.tcp.Connection}'s attributes when, and only when, the
transport is one and has them (checked by name, so a Twisted release that
changes them makes popsrv fall back to Twisted's ordinary writing, not
fail).  The tests check both paths.
"""

from __future__ import annotations

from typing import Any, Callable, cast

from twisted.internet import tcp

__all__ = [
    "SEND_LIMIT", "directWriter", "eagerFlusher", "isClosing", "setNoDelay", "streamInLargerSends", "tuneForPOP3",
]

# Let a streaming message leave in sends of up to a MiB rather than
# Twisted's default 128 KiB: fewer turns of the reactor.
SEND_LIMIT = 2**20
_FLUSH_ATTRIBUTES = ("doWrite", "dataBuffer", "_tempDataLen", "disconnecting")
_DIRECT_ATTRIBUTES = (
    "writeSomeData", "dataBuffer", "_tempDataLen", "connected", "disconnected", "disconnecting", "producer", "TLS",
)


def setNoDelay(transport: object) -> None:
    """
    Turn Nagle's algorithm off where the transport can, so a reply's last
    segment is not held back waiting for the client's delayed ACK.
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except (OSError, AttributeError):
            pass


def streamInLargerSends(transport: object) -> None:
    """
    Let a TCP connection send up to L{SEND_LIMIT} octets per turn of the
    reactor; other transports are left as they are.
    """
    if isinstance(transport, tcp.Connection) and hasattr(transport, "SEND_LIMIT"):
        transport.SEND_LIMIT = SEND_LIMIT


def _noFlush() -> None:
    """Leave writing to the reactor."""


def eagerFlusher(transport: object) -> Callable[[], None]:
    """
    Return a function that sends what C{transport} holds now instead of at
    the reactor's next turn: a short session is a few dozen commands, and
    one turn of the event loop less per reply is about a third of its
    latency.

    Only for a TCP connection (over STLS too: it then holds the TLS records)
    that is not closing; whatever cannot be sent now, and any error, is left
    to the reactor as usual.  Never from within a flush: sending may resume
    a message's producer, which may finish a command and run the next
    pipelined one, whose own flush would nest one level deeper per command.
    For any other transport the function does nothing.
    """
    if not isinstance(transport, tcp.Connection):
        return _noFlush
    if not all(hasattr(transport, name) for name in _FLUSH_ATTRIBUTES):
        return _noFlush
    connection: tcp.Connection = transport
    flushing = False

    def flush() -> None:
        nonlocal flushing
        if flushing or connection.disconnecting:
            return
        if connection._tempDataLen or connection.dataBuffer:
            flushing = True
            try:
                connection.doWrite()
            finally:
                flushing = False

    return flush


def directWriter(transport: Any) -> Callable[[bytes], None]:
    """
    Return a function that writes to C{transport}: on a TCP connection
    that holds nothing yet to send, by sending at once, so that a reply
    that leaves in one C{send} costs neither registering the connection
    for writing nor a turn of the reactor to unregister it (two
    C{epoll_ctl} calls); anything else (what could not be sent, a
    connection that holds data, is lost, closing or aborted, speaks TLS or
    streams from a producer that is not a streaming one) goes through the
    transport's own C{write}, which drops what a dead connection is given.
    Any other transport gets its own C{write}.
    """
    if not isinstance(transport, tcp.Connection):
        return cast(Callable[[bytes], None], transport.write)
    if not all(hasattr(transport, name) for name in _DIRECT_ATTRIBUTES):
        return transport.write
    connection: Any = transport

    def write(data: bytes) -> None:
        producer = connection.producer
        if (
            connection.connected
            and not connection.disconnected
            and not getattr(connection, "_aborting", False)
            and not connection.dataBuffer
            and not connection._tempDataLen
            and not connection.disconnecting
            and not connection.TLS
            and (producer is None or connection.streamingProducer)
        ):
            sent = connection.writeSomeData(data)
            if isinstance(sent, int):
                if sent == len(data):
                    return
                data = data[sent:]
        # (Twisted's write then sends the rest, or meets the error again
        # and closes the connection, as usual.)
        connection.write(data)

    return write


def tuneForPOP3(transport: object) -> Callable[[], None]:
    """
    Set a new connection up for POP3's short replies and long messages (no
    Nagle, larger sends); return its L{eagerFlusher}.
    """
    setNoDelay(transport)
    streamInLargerSends(transport)
    return eagerFlusher(transport)


def isClosing(transport: object) -> bool:
    """
    Whether a transport is closed or closing (a transport that cannot say
    is taken as open).
    """
    return bool(getattr(transport, "disconnecting", False)) or bool(getattr(transport, "disconnected", False))
