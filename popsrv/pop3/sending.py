"""
Flow control between a POP3 session and its transport: the read gate that
stops reading commands from a client that does not read its replies, a
consumer that frames a stored message onto the wire, and a producer that
sends a long listing as the client reads it.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IProducer, IPullProducer, IPushProducer
from zope.interface import implementer

from popsrv.pop3 import replies
from popsrv.pop3.effects import SendListing
from popsrv.wire.framing import MessageFramer

__all__ = ["LISTING_BATCH", "ListingProducer", "MessageConsumer", "ReadGate", "sendListing"]

# LIST and UIDL send this many lines per turn of the reactor.
LISTING_BATCH = 10000


@implementer(IPushProducer)
class ReadGate:
    """
    Registered with the transport whenever nothing else is, so that a client
    that sends commands without reading the replies is stopped: when the
    transport's send buffer is full it pauses the gate, and C{blocked} is
    told so until the buffer drains.

    @ivar attached: whether the gate is registered with the transport.
    @ivar blocked: whether the transport paused it.
    """

    def __init__(self, transport: IConsumer, blockedChanged: Callable[[], None], gone: Callable[[], bool]) -> None:
        self._transport = transport
        self._blockedChanged = blockedChanged
        self._gone = gone
        self.attached = False
        self.blocked = False

    def attach(self) -> None:
        """
        Register with the transport (unless already, or the connection is
        going).
        """
        if not self.attached and not self._gone():
            self.attached = True
            self.blocked = False
            self._transport.registerProducer(self, True)

    def detach(self) -> None:
        """
        Unregister from the transport, so that another producer can be
        registered (a message or listing streaming); no longer blocked.
        """
        if self.attached:
            self.attached = False
            self._transport.unregisterProducer()
            if self.blocked:
                self.blocked = False
                self._blockedChanged()

    def pauseProducing(self) -> None:
        """The client's replies are piling up: stop reading commands."""
        self.blocked = True
        self._blockedChanged()

    def resumeProducing(self) -> None:
        """The client read its replies: read commands again."""
        self.blocked = False
        self._blockedChanged()

    def stopProducing(self) -> None:
        """The connection is gone: nothing to do."""


@implementer(IConsumer)
class MessageConsumer:
    """
    Receives a stored message from a store, frames it, and writes it to the
    client; backpressure goes straight from the transport to the store's
    producer, the read gate stepping aside meanwhile.

    The status line (C{+OK ...}) goes out when the store registers its
    producer or first writes, that is, once the message is known to be
    readable.

    @ivar started: whether the status line went out.
    """

    def __init__(
        self, transport: IConsumer, gate: ReadGate, framer: MessageFramer, status: bytes,
        activity: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._gate = gate
        self._framer = framer
        self._status = status
        self._activity = activity
        self._producer: Optional[IProducer] = None
        self.started = False

    def start(self) -> None:
        """
        Send the status line, once.
        """
        if not self.started:
            self.started = True
            self._transport.write(self._status)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Pass the store's producer to the transport.
        """
        self._producer = producer
        self.start()
        self._gate.detach()
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """
        The store is done producing.
        """
        self._producer = None
        self._transport.unregisterProducer()
        self._gate.attach()

    def write(self, data: bytes) -> None:
        """
        Frame one chunk of the stored message and send it.
        """
        self.start()
        out = self._framer.feed(data)
        if out:
            self._transport.write(out)
        self._activity()
        if self._framer.done and self._producer is not None:
            self._producer.stopProducing()

    def finish(self) -> None:
        """
        Send the end of the reply.
        """
        self.start()
        self._transport.write(self._framer.finish())

    def ended(self, refusal: Optional[bytes]) -> bool:
        """
        The maildrop is done with the message: it sent all of it (C{refusal}
        is C{None}: send the end of the reply), or could not start it (send
        its C{refusal} instead).

        @return: whether the whole message was sent.
        """
        if refusal is not None:
            self._transport.write(refusal)
            return False
        self.finish()
        return True


@implementer(IPullProducer)
class ListingProducer:
    """
    Sends the lines of a long multi-line reply (LIST or UIDL of a big
    maildrop) a batch at a time, each when the client has read the one
    before: a listing of 100,000 messages never holds up other sessions, nor
    fills memory for a client that does not read.
    """

    def __init__(
        self, transport: IConsumer, gate: ReadGate, lines: Iterator[bytes], activity: Callable[[], None]
    ) -> None:
        self._transport = transport
        self._gate = gate
        self._lines: Optional[Iterator[bytes]] = lines
        self._activity = activity
        self.done: defer.Deferred[None] = defer.Deferred()

    def start(self, status: bytes) -> defer.Deferred[None]:
        """
        Send the status line, then the lines as the transport asks for them.

        @return: fires when the terminator is sent, or the connection lost.
        """
        self._gate.detach()
        self._transport.write(status)
        self._transport.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        """
        Send the next batch of lines; after the last, the terminator.
        """
        if self._lines is None:
            return
        batch = list(itertools.islice(self._lines, LISTING_BATCH))
        if batch:
            self._transport.write(b"\r\n".join(batch) + b"\r\n")
            self._activity()
        if len(batch) < LISTING_BATCH:
            self._transport.write(b".\r\n")
            self._finish()

    def stopProducing(self) -> None:
        """
        The connection is gone: stop.
        """
        self._finish()

    def _finish(self) -> None:
        if self._lines is None:
            return
        self._lines = None
        self._transport.unregisterProducer()
        self._gate.attach()
        self.done.callback(None)


def sendListing(
    transport: IConsumer, gate: ReadGate, listing: SendListing, activity: Callable[[], None]
) -> Optional[defer.Deferred[None]]:
    """
    Send a multi-line listing: in one write if it is short, else through a
    L{ListingProducer} as the client reads it.

    @return: C{None} when it is sent, else a C{Deferred} that fires
        when it is.
    """
    if listing.count <= LISTING_BATCH:
        transport.write(replies.multiline(listing.status, list(listing.lines)))
        return None
    return ListingProducer(transport, gate, listing.lines, activity).start(replies.ok(listing.status))
