"""
The Twisted glue of a POP3 session: bytes in and out, timers, flow control,
TLS, and carrying out what the sans-IO L{Session} asks for (logging in,
streaming a message, applying deletions).

POP3's semantics live in L{popsrv.pop3.session}; this module knows the
transport.  Commands are handled one at a time, in order: while a command
waits (for a login, or for a message to stream), reading from the client
pauses, so any number of pipelined commands get complete replies in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Coroutine, Optional, Union

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    INegotiated,
    ISSLTransport,
)
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from popsrv.pop3 import replies
from popsrv.pop3.commands import State
from popsrv.pop3.effects import (
    Effect,
    LogIn,
    Reply,
    SendListing,
    StartTLS,
    Stream,
    Update,
)
from popsrv.pop3.environment import ConnectionEnvironment
from popsrv.pop3.events import SessionLog
from popsrv.pop3.login import Accepted, LoginAttempt
from popsrv.pop3.opened import OpenedMaildrop, Refusal, StreamBroken
from popsrv.pop3.reading import ReadControl
from popsrv.pop3.sending import MessageConsumer, ReadGate, sendListing
from popsrv.pop3.session import Session
from popsrv.pop3.timing import CommandTimes
from popsrv.pop3.transport import directWriter, eagerFlusher, tuneForPOP3
from popsrv.wire.framing import MessageFramer

if TYPE_CHECKING:  # pragma: no cover
    from popsrv.pop3.factory import POP3Factory

__all__ = ["CLOSE_GRACE", "MAX_LINE_OCTETS", "POP3Protocol", "State", "WHOLE_MESSAGE_OCTETS"]

# No POP3 line comes near this: a longer one closes the connection.
MAX_LINE_OCTETS = 65536
# Seconds a closing connection may take to send its last replies.
CLOSE_GRACE = 10.0
# Replies held while the commands of one read are handled are sent once
# they reach this many octets.
HELD_OCTETS = 64 * 1024
# Messages of at most this many octets are read whole and sent in one write
# (when the maildrop can: IWholeMessages), others streamed.
WHOLE_MESSAGE_OCTETS = 64 * 1024


@implementer(IHandshakeListener)
class POP3Protocol(LineReceiver, TimeoutMixin):
    """
    One POP3 connection.  Build it with L{popsrv.pop3.POP3Factory}.

    @ivar session: the sans-IO L{Session}.
    @ivar challenge: the APOP challenge of this session's greeting.
    @ivar gate: the L{ReadGate} that stops reading from a client that does
        not read its replies (made when the connection is).
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_OCTETS

    def __init__(self, factory: POP3Factory) -> None:
        self.factory = factory
        self.events = SessionLog(factory.listener, factory.clock)
        self.log = self.events.log
        self.challenge = factory.makeChallenge()
        self.environment = ConnectionEnvironment(factory)
        self.session = Session(self.environment, self.challenge, factory.expire, factory.policy.loginDelay)
        self.gate: Optional[ReadGate] = None
        self._flush = eagerFlusher(None)
        # How replies are written (see directWriter), and the replies held
        # while the commands of one read are handled, to leave in one write.
        self._send: Callable[[bytes], None] = self._transportWrite
        self._held: Optional[list[bytes]] = None
        self._heldOctets = 0
        self.reading = ReadControl(self, self.gone)
        self._abortLater: Optional[IDelayedCall] = None
        self._lost = False
        # Whether the connection was broken off (a message failed after part
        # of it was sent): nothing more is read, answered or applied.
        self._aborted = False
        self._committing = False
        self._opened: Optional[OpenedMaildrop] = None
        self._method = ""
        self._peer = ""
        self._host = ""
        self._endReason = "connection lost"
        self._commandTimes = CommandTimes() if factory.timeCommands else None

    def callLater(self, delay: float, function: Callable[..., object], *args: object) -> IDelayedCall:
        """Set a timer on the factory's clock (C{TimeoutMixin}'s timers too)."""
        call: IDelayedCall = self.factory.clock.callLater(delay, function, *args)
        return call

    @property
    def state(self) -> State:
        """The session's L{State}."""
        return self.session.state

    # The connection

    def connectionMade(self) -> None:
        """
        Greet the client (with the APOP challenge when APOP can be used).
        """
        transport = self.transport
        assert transport is not None
        # The one place that asks who the client is: every address-based
        # decision and log line of the session uses this.  Behind a
        # haproxy: listener, it is the PROXY header's source (the header
        # is read before this protocol is connected).
        peer = transport.getPeer()
        self._host = str(getattr(peer, "host", ""))
        self._peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        if not self.factory.admit(self, self._host, self._peer):
            return
        secure = ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport)
        self.environment.connected(transport, secure, peer)
        self._flush = tuneForPOP3(transport)
        self._send = directWriter(transport)
        self.gate = self.reading.gate = ReadGate(transport, self.reading.update, self.gone)  # type: ignore[arg-type]
        self.setTimeout(self.factory.loginTimeout)
        if not secure:
            # Over TLS the gate waits for the handshake (handshakeCompleted).
            self.gate.attach()
        self.events.connected(self._peer, secure)
        self._write(self.session.greet())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """
        Release the maildrop without applying any deletion (unless QUIT is
        applying them right now: then the update releases it when done),
        and log the session's summary.
        """
        self._lost = True
        self.setTimeout(None)
        if self.session.state is State.GREETING:
            return  # refused by a connection limit
        self.factory.release(self, self._host)
        if self._abortLater is not None and self._abortLater.active():
            self._abortLater.cancel()
        self.reading.connectionLost()
        self.session.close()
        if not self._committing:
            self._endSession()
        if reason is not None and reason.check(SSL.Error):
            self.events.tlsFailed(reason.getErrorMessage())
        summary = self.session.summary()
        if self._commandTimes is not None:
            summary["commands"] = self._commandTimes.summary()
        self.events.ended(self._endReason, summary)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: start watching the client's reading (the
        gate, registered sooner, could stop reading the handshake itself).
        """
        if self.gate is not None:
            self.gate.attach()

    def timeoutConnection(self) -> None:
        """
        Close an idle session without a reply and without deleting anything
        (RFC 1939, section 3).
        """
        self.events.idle()
        self._close("idle timeout")

    def lineLengthExceeded(self, line: bytes) -> None:
        """Close a connection that sends a line longer than POP3 allows."""
        self._write(replies.lineTooLongToRead())
        self._close("line too long")

    def _close(self, reason: str) -> None:
        """
        Close once the replies written are sent; abort if the client does not
        take them within L{CLOSE_GRACE} (a stalled client must never keep its
        session and lock alive).
        """
        self._endReason = reason
        self._release()
        if self.gate is not None:
            self.gate.detach()
        assert self.transport is not None
        self.transport.loseConnection()
        if self._abortLater is None:
            self._abortLater = self.callLater(CLOSE_GRACE, self.transport.abortConnection)  # type: ignore[attr-defined]

    def gone(self) -> bool:
        """Whether the connection is closed or closing."""
        # Inline rather than transport.isClosing: it runs several times a command.
        transport = self.transport
        return (
            self._lost or self._aborted or transport.disconnecting  # type: ignore[union-attr]
            or getattr(transport, "disconnected", False)
        )

    def _transportWrite(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _write(self, data: bytes) -> None:
        """
        Write a reply: held while the commands of one read are handled,
        else sent now.
        """
        held = self._held
        if held is None:
            self._send(data)
            return
        held.append(data)
        self._heldOctets += len(data)
        if self._heldOctets >= HELD_OCTETS:
            # Sent now, so that a client that does not read its replies
            # is stopped by the read gate, as ever.
            self._release()

    def _release(self) -> None:
        """
        Send the replies held so far, in one write (before anything else
        writes to the transport, or closes it).
        """
        held = self._held
        if held:
            data = b"".join(held) if len(held) > 1 else held[0]
            held.clear()
            self._heldOctets = 0
            self._send(data)

    # Reading

    def dataReceived(self, data: bytes) -> None:
        """
        Answer the commands in C{data}, and send the replies at once.
        """
        self.reading.received(len(data))
        outermost = self._held is None
        if outermost:
            self._held = []
        try:
            super().dataReceived(data)
        finally:
            if outermost:
                self._release()
                self._held = None
        self._flush()

    def lineReceived(self, line: bytes) -> None:
        """
        Hand one command line to the session and carry out its effect; pause
        reading while that waits.
        """
        if self._aborted:
            return  # pipelined behind a message that broke off
        self.resetTimeout()
        if self.gate is not None and not self.gate.attached and self.environment.secure():
            # A line read over TLS: the handshake is done, even where no
            # handshakeCompleted reached us (a wrapper such as HAProxy's).
            self.gate.attach()
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.reading.lineArrived(line):
            return
        if self.session.state is not State.AUTHORIZATION and self.session.state is not State.TRANSACTION:
            return  # pipelined after QUIT
        times = self._commandTimes
        started = self.factory.clock.seconds() if times is not None else 0.0
        try:
            result = self._perform(self.session.receive(line))
        except Exception:
            self._unexpected(Failure())
            return
        if result is not None:
            result.addErrback(self._unexpected)
        if times is not None:
            times.timed(line, started, self.factory.clock, result)
        if result is not None:
            self.reading.commandStarted(result)

    def sendLine(self, line: bytes) -> None:
        """Send one line; POP3's lines end in CRLF."""
        self._write(line + b"\r\n")

    def readLine(self) -> defer.Deferred[Optional[bytes]]:
        """The client's next line for the command in progress (C{None}: lost)."""
        return self.reading.readLine()

    def _unexpected(self, failure: Failure) -> None:
        """
        A command failed in a way nothing expected: log it for the operator,
        and give the client a plain error, never a traceback.
        """
        self.events.unexpected(failure)
        if not self.gone():
            self._write(replies.INTERNAL_ERROR)

    # Carrying out the session's effects

    def _perform(self, effect: Effect) -> Optional[defer.Deferred[Any]]:
        if isinstance(effect, Reply):
            self._write(effect.data)
            if effect.close is not None:
                self._close(effect.close)
            return None
        if isinstance(effect, Stream):
            return self._stream(effect)
        # Anything else may write to the transport itself, or change it.
        self._release()
        if isinstance(effect, SendListing):
            assert self.transport is not None and self.gate is not None
            return sendListing(self.transport, self.gate, effect, self.resetTimeout)  # type: ignore[arg-type]
        if isinstance(effect, StartTLS):
            self._startTLS(effect)
            return None
        if isinstance(effect, Update):
            return defer.ensureDeferred(self._update(effect))
        self._method = effect.method if isinstance(effect, LogIn) else f"SASL {effect.mechanism.name}"
        attempt = LoginAttempt(self.factory, self.session, self, self.log, self._peer, self._method, self._host)
        return defer.ensureDeferred(self._finishLogin(attempt.run(effect)))

    async def _finishLogin(self, attempt: Coroutine[Any, Any, Union[Accepted, Reply, None]]) -> None:
        outcome = await attempt
        if not isinstance(outcome, Accepted):
            if outcome is not None and not self.gone():
                self._perform(outcome)
            return
        maildrop = outcome.maildrop
        self._opened = OpenedMaildrop(maildrop, outcome.logout, self.log, self._peer)
        if self._lost:
            self._endSession()
            return
        reply = self.session.loginSucceeded(maildrop.name, outcome.snapshot)
        self.setTimeout(self.factory.timeout)
        self.events.loggedIn(maildrop.name, self._method, *self.session.transaction.totals(), self.environment.secure())
        self._write(reply)

    def _startTLS(self, effect: StartTLS) -> None:
        """
        STLS (RFC 2595): what the client sent after the command, before the
        handshake, is discarded (it was not protected and must not be taken
        as coming from the TLS peer).
        """
        self._write(effect.data)
        self._release()
        discarded = self.clearLineBuffer()
        if discarded:
            self.events.tlsInjection(len(discarded))
        assert self.gate is not None
        self.gate.detach()
        self.environment.startTLS()
        self.events.tlsStarted()

    def _stream(self, effect: Stream) -> Optional[defer.Deferred[None]]:
        """
        Send a message from the maildrop through the framer: a small one
        read whole and sent in one write, any other streamed.
        """
        assert self.transport is not None and self.gate is not None and self._opened is not None
        whole = self._opened.readWhole(effect, WHOLE_MESSAGE_OCTETS)
        if isinstance(whole, Refusal):
            self._write(whole.reply)
            return None
        if whole is not None:
            framer = MessageFramer(bodyLines=effect.bodyLines)
            self._write(b"".join((effect.status, framer.feed(whole), framer.finish())))
            if effect.bodyLines is None and not self.gone():
                self.session.transaction.retrieved(effect.number, effect.message)
            return None
        # Streamed: through the transport itself.
        self._release()
        framer = MessageFramer(bodyLines=effect.bodyLines)
        consumer = MessageConsumer(self.transport, self.gate, framer, effect.status, self.resetTimeout)  # type: ignore

        def sent(refusal: Optional[bytes]) -> None:
            if not self.gone() and consumer.ended(refusal) and effect.bodyLines is None:
                self.session.transaction.retrieved(effect.number, effect.message)

        def broken(failure: Failure) -> None:
            failure.trap(StreamBroken)
            # The client already has "+OK" and part of the message: the only
            # honest thing left is to break the connection.
            self._endReason = "storage error while streaming"
            self._aborted = True
            self.transport.abortConnection()  # type: ignore[union-attr]

        return self._opened.stream(effect, consumer, self.gone).addCallbacks(sent, broken)

    async def _update(self, effect: Update) -> None:
        """
        The UPDATE state: commit deletions and seen marks, release, close.
        """
        assert self._opened is not None
        self._endReason = "quit"
        self._committing = True
        try:
            succeeded = await self._opened.commit(effect)
        finally:
            self._committing = False
        if not succeeded:
            self._endReason = "update failed"
        reply = self.session.updated(succeeded)
        if not self._lost:
            self._write(reply)
        self._endSession()
        if not self._lost:
            self._close(self._endReason)

    def _endSession(self) -> None:
        """
        Release the maildrop, once.
        """
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.release()
