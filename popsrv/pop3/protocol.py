"""
The POP3 protocol (RFC 1939, with LAST from RFC 1225): one session's state
machine, AUTHORIZATION -> TRANSACTION -> UPDATE.

The protocol owns POP3's semantics (numbering, deletion marks, RSET, LAST,
replies) and its extensions (CAPA and response codes from RFC 2449, SASL
AUTH from RFC 5034, STLS from RFC 2595, UTF8 from RFC 6856), and knows
nothing about files, databases or password formats: it logs users in
through a twisted.cred portal, which yields an
L{popsrv.interfaces.IMaildrop}, and streams messages from it through
L{popsrv.wire.framing.MessageFramer}.

Commands are handled one at a time, in order: while a command waits (for a
login, or for a message to stream), reading from the client pauses, so any
number of pipelined commands get complete replies in order.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import secrets
import socket
from enum import Enum
from typing import Callable, Iterable, Iterator, Optional

import attr
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer, task, tcp
from twisted.internet.interfaces import (
    IConsumer,
    IHandshakeListener,
    INegotiated,
    IPullProducer,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from popsrv import __version__
from popsrv.auth import sasl
from popsrv.auth.credentials import HEX_DIGEST, APOPCredentials
from popsrv.errors import CredentialsUnavailable, MaildropLocked, MaildropUnusable, MessageVanished
from popsrv.interfaces import IMaildrop, IScramParameters
from popsrv.messages import MessageInfo, MessageList
from popsrv.pop3.policy import LoginPolicy
from popsrv.tls import TLSSettings
from popsrv.wire.framing import MessageFramer

__all__ = ["POP3Factory", "POP3Protocol", "State"]

SEND_LIMIT = 2**20
# LIST and UIDL send this many lines per turn of the reactor.
LISTING_BATCH = 10000

DEFAULT_TIMEOUT = 600
MAX_COMMAND_OCTETS = 512
MAX_AUTH_OCTETS = 16384
MAX_LINE_OCTETS = 65536
MAX_AUTH_FAILURES = 3
MAX_BAD_COMMANDS = 20
AUTH_FAILURE_DELAY = 1.0
CLOSE_GRACE = 10.0
_CHALLENGE_HOST = re.compile(rb"[^A-Za-z0-9.@_+/-]")


class State(Enum):
    """
    The three states of a POP3 session (RFC 1939, section 3).
    """

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


@attr.s(frozen=True, slots=True, auto_attribs=True)
class _Command:
    """
    How a command is called: the state it belongs to and how many
    space-separated arguments it takes.
    """

    state: Optional[State]
    minArgs: int
    maxArgs: int
    restOfLine: bool = False


_AUTH = State.AUTHORIZATION
_TRANS = State.TRANSACTION
COMMANDS = {
    b"USER": _Command(_AUTH, 1, 1),
    b"PASS": _Command(_AUTH, 1, 1, restOfLine=True),
    b"APOP": _Command(_AUTH, 2, 2),
    b"STAT": _Command(_TRANS, 0, 0),
    b"LIST": _Command(_TRANS, 0, 1),
    b"UIDL": _Command(_TRANS, 0, 1),
    b"RETR": _Command(_TRANS, 1, 1),
    b"TOP": _Command(_TRANS, 2, 2),
    b"DELE": _Command(_TRANS, 1, 1),
    b"RSET": _Command(_TRANS, 0, 0),
    b"LAST": _Command(_TRANS, 0, 0),
    b"NOOP": _Command(_TRANS, 0, 0),
    b"QUIT": _Command(None, 0, 0),
    b"CAPA": _Command(None, 0, 0),
    b"AUTH": _Command(_AUTH, 0, 2),
    b"STLS": _Command(_AUTH, 0, 0),
    b"UTF8": _Command(_AUTH, 0, 0),
}


class _Reply(Exception):
    """
    Raised inside a command to end it with an C{-ERR} reply.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _printable(data: bytes, limit: int = 40) -> str:
    """
    Return client-sent bytes as a short, safe text to quote in a reply.
    """
    text = data[:limit].decode("ascii", "replace")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text + ("..." if len(data) > limit else "")


def _decodeBase64(data: bytes) -> bytes:
    """
    Decode a client's base64 SASL data strictly, or refuse it.
    """
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _Reply("invalid base64 data")


def _isUTF8(data: bytes) -> bool:
    """
    Whether client-sent bytes are valid UTF-8.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _count(number: int, noun: str) -> str:
    """
    Return "1 message", "2 messages".
    """
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _setNoDelay(transport) -> None:
    """
    Turn Nagle's algorithm off, so a reply's last segment is not held back
    waiting for the client's delayed ACK.
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except (OSError, AttributeError):
            pass


@implementer(IConsumer)
class _FramingConsumer:
    """
    Receives a stored message from a backend, frames it, and writes it to
    the client; backpressure goes straight from the transport to the
    backend's producer.

    The status line (C{+OK ...}) goes out when the backend registers its
    producer, that is, once the message is known to be readable.
    """

    def __init__(self, protocol: POP3Protocol, framer: MessageFramer, status: bytes) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._framer = framer
        self._status = status
        self._producer = None
        self.started = False

    def start(self) -> None:
        """
        Send the status line, once.
        """
        if not self.started:
            self.started = True
            self._transport.write(self._status)

    def registerProducer(self, producer, streaming: bool) -> None:
        """
        Pass the backend's producer to the transport.
        """
        self._producer = producer
        self.start()
        self._protocol._unregisterGate()
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """
        The backend is done producing.
        """
        self._producer = None
        self._transport.unregisterProducer()
        self._protocol._registerGate()

    def write(self, data: bytes) -> None:
        """
        Frame one chunk of the stored message and send it.
        """
        self.start()
        out = self._framer.feed(data)
        if out:
            self._transport.write(out)
        self._protocol.resetTimeout()
        if self._framer.done and self._producer is not None:
            self._producer.stopProducing()

    def finish(self) -> None:
        """
        Send the end of the reply, together with nothing else pending.
        """
        self.start()
        self._transport.write(self._framer.finish())


@implementer(IPullProducer)
class _ListingProducer:
    """
    Sends the lines of a long multi-line reply (LIST or UIDL of a big
    maildrop) a batch at a time, each when the client has read the one
    before: a listing of 100,000 messages never holds up other sessions,
    nor fills memory for a client that does not read.
    """

    def __init__(self, protocol: POP3Protocol, lines: Iterator[bytes]) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._lines: Optional[Iterator[bytes]] = lines
        self.done: defer.Deferred[None] = defer.Deferred()

    def start(self, status: bytes) -> defer.Deferred:
        """
        Send the status line, then the lines as the transport asks for them.
        """
        self._protocol._unregisterGate()
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
            self._protocol.resetTimeout()
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
        self._protocol._registerGate()
        self.done.callback(None)


@implementer(IPushProducer)
class _ReadGate:
    """
    Registered with the transport whenever no message is streaming, so that
    a client that sends commands without reading the replies is stopped:
    when the transport's send buffer is full it pauses the gate, and the
    session stops reading commands until the buffer drains.
    """

    def __init__(self, protocol: POP3Protocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol._setBlocked(True)

    def resumeProducing(self) -> None:
        self._protocol._setBlocked(False)

    def stopProducing(self) -> None:
        pass


@implementer(IHandshakeListener)
class POP3Protocol(LineReceiver, TimeoutMixin):
    """
    One POP3 session.  Build it with L{POP3Factory}.

    @ivar state: the session's L{State}.
    @ivar challenge: the APOP challenge of this session's greeting.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_OCTETS
    log = Logger()

    def __init__(self, factory: POP3Factory) -> None:
        self.factory = factory
        self.state = State.AUTHORIZATION
        self.challenge = factory.makeChallenge()
        self._user: Optional[bytes] = None
        self._failures = 0
        self._badCommands = 0
        self._gate = _ReadGate(self)
        self._gateRegistered = False
        self._waiting = False
        self._blocked = False
        self._committing = False
        self._userName = "-"
        self._abortLater = None
        self._secure = False
        self._flushable = False
        self._flushing = False
        self._lineWaiter: Optional[defer.Deferred] = None
        self._method = ""
        self._maildrop: Optional[IMaildrop] = None
        self._logout: Optional[Callable[[], None]] = None
        # The maildrop's snapshot (never changed here), and the indexes
        # into it of the messages marked deleted.
        self._messages = MessageList.of(())
        self._deleted: set[int] = set()
        self._liveCount = self._liveOctets = self._totalOctets = 0
        self._initialLast = 0
        self._last = 0
        self._retrieved: set[str] = set()
        self._newlySeen: set[str] = set()
        self._retrievedOctets = 0
        self._deletedCount = 0
        self._lost = False
        self._peer = ""
        self._started = 0.0
        self._endReason = "connection lost"

    # Connection life cycle

    def connectionMade(self) -> None:
        """
        Greet the client with this session's APOP challenge.
        """
        clock = self.factory.clock
        self.callLater = clock.callLater
        self._started = clock.seconds()
        peer = self.transport.getPeer()
        self._peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        self._secure = ISSLTransport.providedBy(self.transport) or INegotiated.providedBy(self.transport)
        _setNoDelay(self.transport)
        self._flushable = isinstance(self.transport, tcp.Connection)
        if self._flushable:
            # Let a streaming message leave in sends of up to a MiB rather
            # than Twisted's default 128 KiB: fewer turns of the reactor.
            self.transport.SEND_LIMIT = SEND_LIMIT
        self.setTimeout(self.factory.timeout)
        if not self._secure:
            # Over TLS the gate waits for the handshake (handshakeCompleted).
            self._registerGate()
        self.log.info("connection from {peer}", peer=self._peer, event="connect")
        if self._credentialInterfaces() & {IUsernameHashedPassword}:
            # The challenge tells clients that APOP is available; it ends
            # the line, as in RFC 1939's example (curl looks for it there).
            self._send(b"+OK popsrv ready " + self.challenge)
        else:
            self._send(b"+OK popsrv ready")

    def connectionLost(self, reason: Failure = None) -> None:
        """
        Release the maildrop without applying any deletion (unless QUIT is
        applying them right now: then the update releases it when done),
        and log the session's summary.
        """
        self._lost = True
        self.setTimeout(None)
        if self._abortLater is not None and self._abortLater.active():
            self._abortLater.cancel()
        if self._lineWaiter is not None:
            waiter, self._lineWaiter = self._lineWaiter, None
            waiter.callback(None)
        if not self._committing:
            self._endSession()
        self.log.info(
            "session of {user} from {peer} ended ({reason}): retrieved {retrieved} messages "
            "({retrievedOctets} octets), deleted {deleted}, {duration:.3f}s",
            user=self._userName, peer=self._peer, reason=self._endReason,
            retrieved=len(self._retrieved), retrievedOctets=self._retrievedOctets,
            deleted=self._deletedCount, duration=self.factory.clock.seconds() - self._started,
            event="session-end",
        )

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: start watching the client's reading.

        Until now the TLS layer may pause a registered producer while it
        holds back writes (the greeting), and the read gate would then stop
        reading the very handshake that would resume it.
        """
        self._registerGate()

    def timeoutConnection(self) -> None:
        """
        Close an idle session without a reply and without deleting anything
        (RFC 1939, section 3).
        """
        self.log.info("closing idle session from {peer}", peer=self._peer, event="timeout")
        self._close("idle timeout")

    def _close(self, reason: str) -> None:
        """
        Close the connection once the replies already written are sent; if
        the client does not take them within a grace period (it stopped
        reading, perhaps in the middle of a message), abort the connection,
        so that a stalled client never keeps its session and lock alive.
        """
        self._endReason = reason
        self._unregisterGate()
        self.transport.loseConnection()
        if self._abortLater is None:
            self._abortLater = self.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Close a connection that sends a line longer than anything POP3
        allows.
        """
        self._send(b"-ERR line too long, closing connection")
        self._close("line too long")

    # Flow control: read the next command only when the last one is done
    # and the client is reading its replies.

    def _registerGate(self) -> None:
        if not self._gateRegistered and not self._gone():
            self._gateRegistered = True
            self._blocked = False
            self.transport.registerProducer(self._gate, True)

    def _unregisterGate(self) -> None:
        if self._gateRegistered:
            self._gateRegistered = False
            self.transport.unregisterProducer()
            if self._blocked:
                self._blocked = False
                self._updateReading()

    def _setBlocked(self, blocked: bool) -> None:
        self._blocked = blocked
        self._updateReading()

    def _updateReading(self) -> None:
        """
        Pause or resume reading commands as the session's state requires.
        """
        if self._gone():
            return
        stop = self._waiting or self._blocked
        if stop and not self.paused:
            self.pauseProducing()
        elif not stop and self.paused:
            self.resumeProducing()

    # Command dispatch

    def dataReceived(self, data: bytes) -> None:
        """
        Answer the commands in C{data}, and send the replies at once.
        """
        super().dataReceived(data)
        self._flush()

    def _flush(self) -> None:
        """
        Send what the transport holds now instead of at the reactor's next
        turn: a short session is a few dozen commands, and one turn of the
        event loop less per reply is about a third of its latency.

        Only for a TCP connection (over STLS too: it then holds the TLS
        records) that is not closing; whatever cannot be sent now, and any
        error, is left to the reactor as usual.  Never from within a flush:
        sending may resume a message's producer, which may finish the
        command and run the next pipelined one, whose own flush would nest
        one level deeper per command.
        """
        transport = self.transport
        if self._flushing or not self._flushable or transport.disconnecting:
            return
        if transport._tempDataLen or transport.dataBuffer:
            self._flushing = True
            try:
                transport.doWrite()
            finally:
                self._flushing = False

    def lineReceived(self, line: bytes) -> None:
        """
        Parse one command line and run it; pause reading while it waits.
        """
        self.resetTimeout()
        if self._secure and not self._gateRegistered:
            # A line read over TLS: the handshake is done, even where no
            # handshakeCompleted reached us (a wrapper such as HAProxy's).
            self._registerGate()
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._lineWaiter is not None:
            # A command in progress (an AUTH exchange) asked for this line.
            # Stop reading until it says what comes next.
            waiter, self._lineWaiter = self._lineWaiter, None
            self._waiting = True
            self._updateReading()
            waiter.callback(line)
            return
        try:
            result = self._dispatch(line)
        except _Reply as reply:
            self._err(reply.text)
            self._badCommands += 1
            if self._badCommands >= MAX_BAD_COMMANDS:
                self._err("too many bad commands, closing connection")
                self._close("too many bad commands")
            return
        except Exception:
            self._unexpected(Failure())
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(self._unexpected)
            if not result.called:
                # Read nothing more until the command is done, unless it is
                # itself waiting for the client's next line.
                self._waiting = self._lineWaiter is None
                self._updateReading()
                result.addBoth(self._commandDone)

    def _dispatch(self, line: bytes):
        """
        Find, check and call the handler of a command line.
        """
        keyword, _, rest = line.partition(b" ")
        name = keyword.upper()
        limit = MAX_AUTH_OCTETS if name == b"AUTH" else MAX_COMMAND_OCTETS
        if len(line) + 2 > limit:
            raise _Reply(f"command line too long (the limit is {limit} octets)")
        command = COMMANDS.get(name)
        if command is None:
            if not keyword.strip():
                raise _Reply("empty command")
            raise _Reply(f'unknown command "{_printable(keyword)}"')
        lower = name.decode("ascii").lower()
        if command.state is not None and command.state is not self.state:
            if self.state is State.AUTHORIZATION:
                raise _Reply(f"{name.decode()} is not allowed until you log in")
            raise _Reply(f"{name.decode()} is not allowed after login")
        if command.restOfLine:
            args = [rest] if rest else []
        else:
            args = rest.split()
        if len(args) < command.minArgs:
            raise _Reply(f"Too few arguments for the {lower} command.")
        if len(args) > command.maxArgs:
            raise _Reply(f"Too many arguments for the {lower} command.")
        return getattr(self, "do_" + name.decode("ascii"))(*args)

    def _commandDone(self, result):
        """
        A waiting command has finished: read the next one.
        """
        self._waiting = False
        self._updateReading()
        return result

    async def _readLine(self) -> Optional[bytes]:
        """
        Read the client's next line for the command in progress (L{None} if
        the connection is lost first).
        """
        waiter: defer.Deferred = defer.Deferred()
        self._lineWaiter = waiter
        self._waiting = False
        self._updateReading()
        return await waiter

    def _gone(self) -> bool:
        """
        Whether the connection is closed or closing.
        """
        transport = self.transport
        return self._lost or transport.disconnecting or getattr(transport, "disconnected", False)

    def _unexpected(self, failure: Failure) -> None:
        """
        A command failed in a way no handler expected: log it for the
        operator, and give the client a plain error, never a traceback.
        """
        self.log.failure("unexpected error in POP3 command", failure, peer=self._peer)
        if not self._gone():
            self._err("[SYS/TEMP] internal server error")

    # Replies

    def _send(self, line: bytes) -> None:
        """
        Send one line.
        """
        self.transport.write(line + b"\r\n")

    def _ok(self, text: str = "") -> None:
        """
        Send a positive reply.
        """
        self._send(("+OK " + text if text else "+OK").encode("utf-8"))

    def _err(self, text: str) -> None:
        """
        Send a negative reply.
        """
        self._send(("-ERR " + text).encode("utf-8"))

    def _sendListing(self, first: str, lines: Iterable[bytes], count: int) -> Optional[defer.Deferred]:
        """
        Send a multi-line reply of C{count} lines (which need no
        dot-stuffing): in one write if it is short, else as the client reads
        it (the returned L{Deferred} fires when it is all sent).
        """
        if count <= LISTING_BATCH:
            self._sendMultiline(first, list(lines))
            return None
        return _ListingProducer(self, iter(lines)).start(("+OK " + first + "\r\n").encode("utf-8"))

    def _sendMultiline(self, first: str, lines: list[bytes]) -> None:
        """
        Send a multi-line reply (lines need no dot-stuffing) in one write.
        """
        body = b"\r\n".join(lines) + b"\r\n" if lines else b""
        self.transport.write(("+OK " + first + "\r\n").encode("utf-8") + body + b".\r\n")

    # AUTHORIZATION

    def do_USER(self, name: bytes) -> None:
        """
        USER name: remember the name; the answer never tells whether the user
        exists.
        """
        self._requirePlaintextAllowed()
        self._user = name
        self._ok("send your password")

    def do_PASS(self, password: bytes):
        """
        PASS secret: log in with the name given by USER.
        """
        self._requirePlaintextAllowed()
        if self._user is None:
            raise _Reply("give USER before PASS")
        user, self._user = self._user, None
        self._method = "USER/PASS"
        return self._login(UsernamePassword(user, password), user, b"\0" in password)

    def do_APOP(self, name: bytes, digest: bytes):
        """
        APOP name digest: log in with MD5(challenge + secret).
        """
        self._user = None
        credentials = APOPCredentials(self.challenge, name, digest)
        self._method = "APOP"
        return self._login(credentials, name, not HEX_DIGEST.fullmatch(digest))

    def do_CAPA(self) -> None:
        """
        CAPA (RFC 2449): what this server offers this connection.  The
        list is the same before and after login: RFC 2449 (section 5) wants
        the capabilities of the AUTHORIZATION state announced in both.
        """
        lines = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self._plaintextAllowed() and IUsernamePassword in self._credentialInterfaces():
            lines.append(b"USER")
        mechanisms = self._mechanisms()
        if mechanisms:
            lines.append(b"SASL " + b" ".join(m.name.encode("ascii") for m in mechanisms))
        if self._stlsAvailable():
            lines.append(b"STLS")
        lines.append(b"EXPIRE NEVER" if self.factory.expire is None else b"EXPIRE %d" % self.factory.expire)
        if self.factory.policy.loginDelay is not None:
            lines.append(b"LOGIN-DELAY %d" % self.factory.policy.loginDelay)
        lines.append(b"UTF8 USER")
        lines.append(b"IMPLEMENTATION popsrv-" + __version__.encode("ascii"))
        self._sendMultiline("capability list follows", lines)

    def do_UTF8(self) -> None:
        """
        UTF8 (RFC 6856): the client handles UTF-8.  User names and passwords
        in UTF-8 are accepted with or without it (the capability says
        "UTF8 USER"), and messages are always sent as stored.
        """
        self._ok("UTF8 enabled")

    def do_STLS(self) -> None:
        """
        STLS (RFC 2595): start TLS.  Whatever the client sent after the
        command, before the handshake, is discarded (it was not protected
        and must not be taken as coming from the TLS peer), and the session
        starts over: a USER given before is forgotten.
        """
        if self._secure:
            raise _Reply("TLS is already active")
        if not self._stlsAvailable():
            raise _Reply("STLS is not available on this server")
        self._ok("begin TLS negotiation")
        discarded = self.clearLineBuffer()
        if discarded:
            self.log.warn(
                "discarded {count} octets {peer} sent before the TLS handshake",
                count=len(discarded), peer=self._peer, event="stls-injection",
            )
        self._user = None
        self._unregisterGate()
        self.transport.startTLS(self.factory.tls.options)
        self._secure = True
        self.log.info("TLS started with {peer}", peer=self._peer, event="stls")

    def do_AUTH(self, name: Optional[bytes] = None, initial: Optional[bytes] = None):
        """
        AUTH [mechanism [initial-response]] (RFC 5034): without arguments,
        list the mechanisms (the form of RFC 1734 older clients use);
        otherwise run a SASL exchange and log in.
        """
        if name is None:
            self._sendMultiline("methods follow", [m.name.encode("ascii") for m in self._mechanisms()])
            return None
        mechanism = sasl.mechanism(name.decode("ascii", "replace"))
        if mechanism is None or mechanism.credentialInterface not in self._credentialInterfaces():
            raise _Reply(f'unsupported authentication mechanism "{_printable(name)}"')
        if mechanism.plaintext:
            self._requirePlaintextAllowed()
        response = None
        if initial is not None:
            response = b"" if initial == b"=" else _decodeBase64(initial)
        return defer.ensureDeferred(self._authenticate(mechanism, response))

    async def _authenticate(self, mechanism, response: Optional[bytes]) -> None:
        """
        Run a SASL exchange to its credentials, then log in with them.  A
        failure is paced from the client's last response, like a failed
        PASS from its command.
        """
        self._user = None
        self._method = f"SASL {mechanism.name}"
        exchange = mechanism.exchange(self.challenge, self._scramLookup())
        while True:
            started = self.factory.clock.seconds()
            try:
                step = exchange.step(response)
                if isinstance(step, defer.Deferred):
                    step = await step
            except sasl.SASLError as error:
                await self._authFailed(b"", f"{mechanism.name}: {error}", started)
                return
            except Exception:
                self._backendFailed(Failure(), b"")
                return
            if not isinstance(step, sasl.Challenge):
                break
            self._send(b"+ " + base64.b64encode(step.data))
            line = await self._readLine()
            if line is None:
                return
            if line == b"*":
                self._err("authentication cancelled")
                return
            try:
                response = _decodeBase64(line)
            except _Reply as reply:
                self._err(reply.text)
                return
        await self._loginAsync(step, step.username, started, exchange)

    def _scramLookup(self):
        """
        The lookup of stored SCRAM salts for this session's exchanges: that
        of the checker that verifies SCRAM's credentials, if it has one.
        """
        checker = self.factory.portal.checkers.get(IUsernameHashedPassword)
        if IScramParameters.providedBy(checker):
            return checker.scramParameters
        return None

    def _backendFailed(self, failure: Failure, user: bytes) -> None:
        """
        The credentials backend could not check a login: tell the client to
        try again later.  A backend that says it is unavailable gets one log
        line; anything else is logged with its traceback.
        """
        if failure.check(CredentialsUnavailable):
            self.log.warn(
                "authentication unavailable for {user} from {peer}: {why}",
                user=_printable(user, 64), peer=self._peer, why=str(failure.value) or "no reason given",
                event="auth-unavailable",
            )
        else:
            self.log.failure("authentication backend failed for {user!r}", failure, user=user, peer=self._peer)
        if not self._gone():
            self._err("[SYS/TEMP] authentication is unavailable, try again later")

    def _stlsAvailable(self) -> bool:
        """
        Whether STLS can start TLS on this connection now.
        """
        return self.factory.tls is not None and not self._secure and ITLSTransport.providedBy(self.transport)

    def _credentialInterfaces(self) -> set:
        """
        The credentials interfaces the portal's checkers accept.
        """
        return set(self.factory.portal.listCredentialsInterfaces())

    def _plaintextAllowed(self) -> bool:
        return self.factory.policy.plaintextAllowed(self._secure, self.transport.getPeer())

    def _requirePlaintextAllowed(self) -> None:
        """
        Refuse a command that would send a password in plaintext when the
        policy forbids it now.
        """
        if not self._plaintextAllowed():
            tlsWouldHelp = self.factory.policy.plaintext == "tls-only" and self._stlsAvailable()
            advice = "; use STLS first" if tlsWouldHelp else ""
            raise _Reply(f"[AUTH] plaintext authentication is not allowed on this connection{advice}")

    def _mechanisms(self) -> list:
        """
        The SASL mechanisms this session may use now.
        """
        interfaces = self._credentialInterfaces()
        plaintext = self._plaintextAllowed()
        return [
            m for m in sasl.MECHANISMS
            if m.credentialInterface in interfaces and (plaintext or not m.plaintext)
        ]

    def _login(self, credentials, user: bytes, malformed: bool) -> defer.Deferred:
        """
        Run a login through the portal, then lock and snapshot the maildrop.
        """
        started = self.factory.clock.seconds()
        if malformed or b"\0" in user or not _isUTF8(user):
            return self._authFailed(user, "malformed credentials", started)
        return defer.ensureDeferred(self._loginAsync(credentials, user, started))

    async def _loginAsync(self, credentials, user: bytes, started: float, exchange=None) -> None:
        try:
            _, maildrop, logout = await self.factory.portal.login(credentials, None, IMaildrop)
        except (UnauthorizedLogin, UnhandledCredentials, UnicodeError) as error:
            await self._authFailed(user, str(error) or error.__class__.__name__, started)
            return
        except Exception:
            self._backendFailed(Failure(), user)
            return
        try:
            snapshot = await self._openMaildrop(maildrop, exchange)
        except _Reply as refusal:
            logout()
            if not self._gone():
                self._err(refusal.text)
            return
        self._maildrop, self._logout = maildrop, logout
        self._userName = maildrop.name
        self.factory.policy.loggedIn(maildrop.name, self.factory.clock.seconds())
        if self._lost:
            self._endSession()
            return
        # By column, however the backend gave it: totals and listings are
        # then made at C speed.
        self._messages = snapshot if isinstance(snapshot, MessageList) else MessageList.of(snapshot)
        self._liveCount = len(snapshot)
        self._liveOctets = self._totalOctets = self._messages.totalSize()
        self._initialLast = self._last = self._messages.lastSeen()
        self.state = State.TRANSACTION
        count, octets = self._totals()
        self.log.info(
            "{user} logged in from {peer} with {mechanism}, {count} messages ({octets} octets)",
            user=maildrop.name, peer=self._peer, count=count, octets=octets, mechanism=self._method,
            tls=self._secure, event="login",
        )
        self._ok(f"{maildrop.name} has {_count(count, 'message')} ({octets} octets)")

    async def _openMaildrop(self, maildrop: IMaildrop, exchange) -> list[MessageInfo]:
        """
        Finish a login the checker accepted: send SASL's success data, apply
        the login delay, lock and snapshot the maildrop.

        @raise _Reply: with the refusal to send, once logged (the maildrop
            is not locked then).
        """
        name = maildrop.name
        successData = exchange.successData() if exchange is not None else None
        if successData is not None:
            # RFC 5034: data that comes with success is sent as one more
            # challenge, which the client answers with an empty line.
            self._send(b"+ " + base64.b64encode(successData))
            if await self._readLine() != b"":
                raise _Reply("authentication cancelled")
        if not self.factory.policy.mayLogIn(name, self.factory.clock.seconds()):
            self.log.info("{user} logged in again too soon", user=name, peer=self._peer, event="login-delay")
            raise _Reply(f"[LOGIN-DELAY] wait {self.factory.policy.loginDelay} seconds between logins")
        try:
            await defer.maybeDeferred(maildrop.lock)
        except MaildropLocked:
            self.log.info("maildrop of {user} is in use", user=name, peer=self._peer, event="in-use")
            raise _Reply("[IN-USE] maildrop is locked by another session, try again later")
        except MaildropUnusable as error:
            self.log.error("maildrop of {user} is unusable: {error}", user=name, error=str(error))
            raise _Reply("[SYS/PERM] maildrop cannot be used, contact the administrator")
        except Exception:
            self.log.failure("could not lock the maildrop of {user}", user=name, peer=self._peer)
            raise _Reply("[SYS/TEMP] maildrop is unavailable, try again later")
        try:
            return await defer.maybeDeferred(maildrop.listMessages)
        except Exception:
            maildrop.release()
            self.log.failure("could not list the maildrop of {user}", user=name, peer=self._peer)
            raise _Reply("[SYS/TEMP] maildrop is unavailable, try again later")

    def _authFailed(self, user: bytes, why: str, started: float) -> defer.Deferred:
        """
        Answer a failed login the same way whatever the reason, and at the
        same time after the command whatever the checker did, so neither the
        reply nor its timing tells whether the user exists; close the
        connection after too many.
        """
        self._failures += 1
        self.log.info(
            "login failed for {user} from {peer} with {mechanism}: {why}",
            user=_printable(user, 64), peer=self._peer, why=why, failures=self._failures,
            mechanism=self._method, event="login-failed",
        )
        clock = self.factory.clock
        wait = started + self.factory.authFailureDelay - clock.seconds()
        if wait <= 0:
            self._answerAuthFailure()
            return defer.succeed(None)
        return task.deferLater(clock, wait, self._answerAuthFailure)

    def _answerAuthFailure(self) -> None:
        if self._gone():
            return
        if self._failures >= MAX_AUTH_FAILURES:
            self._err("[AUTH] invalid user name or password; too many failures, closing connection")
            self._close("too many login failures")
        else:
            self._err("[AUTH] invalid user name or password")

    # TRANSACTION

    def _totals(self) -> tuple[int, int]:
        """
        The number of messages not marked deleted, and their octets (kept up
        to date by DELE and RSET, so STAT costs nothing in a big maildrop).
        """
        return self._liveCount, self._liveOctets

    def _message(self, argument: bytes) -> tuple[int, MessageInfo]:
        """
        Return the number and entry of the live message an argument names.
        """
        if not argument.isdigit():
            raise _Reply(f'invalid message number "{_printable(argument)}"')
        number = int(argument)
        if not 1 <= number <= len(self._messages):
            raise _Reply(f"no such message, only {len(self._messages)} messages in maildrop")
        if number - 1 in self._deleted:
            raise _Reply(f"message {number} already deleted")
        return number, self._messages[number - 1]

    def do_STAT(self) -> None:
        """
        STAT: the number and total size of the live messages.
        """
        count, octets = self._totals()
        self._ok(f"{count} {octets}")

    def do_LIST(self, argument: Optional[bytes] = None) -> Optional[defer.Deferred]:
        """
        LIST [n]: the size of one or every live message.
        """
        if argument is not None:
            number, message = self._message(argument)
            self._ok(f"{number} {message.size}")
            return
        count, octets = self._totals()
        lines = self._numbered(b"%d %d", self._messages.sizes())
        return self._sendListing(f"{count} messages ({octets} octets)", lines, count)

    def do_UIDL(self, argument: Optional[bytes] = None) -> Optional[defer.Deferred]:
        """
        UIDL [n]: the unique id of one or every live message.
        """
        if argument is not None:
            number, message = self._message(argument)
            self._ok(f"{number} {message.uid}")
            return
        # Uids are printable ASCII, whose UTF-8 is the same octets.
        lines = self._numbered(b"%d %s", map(str.encode, self._messages.uids()))
        return self._sendListing("unique-id listing follows", lines, self._liveCount)

    def _numbered(self, template: bytes, values: Iterable) -> Iterator[bytes]:
        """
        The lines C{template % (number, value)} of the live messages, in
        order (made at C speed, as LIST and UIDL may have 100,000 of them).
        """
        lines = map(template.__mod__, zip(itertools.count(1), values))
        deleted = self._deleted
        if not deleted:
            return lines
        return (line for index, line in enumerate(lines) if index not in deleted)

    def do_RETR(self, argument: bytes) -> defer.Deferred:
        """
        RETR n: send a whole message.
        """
        number, message = self._message(argument)
        status = b"+OK %d octets\r\n" % (message.size,)
        return self._sendMessage(number, message, MessageFramer(), status, retrieve=True)

    def do_TOP(self, argument: bytes, lines: bytes) -> defer.Deferred:
        """
        TOP n k: send a message's headers and the first k lines of its body.
        """
        number, message = self._message(argument)
        if not lines.isdigit():
            raise _Reply(f'invalid number of lines "{_printable(lines)}"')
        framer = MessageFramer(bodyLines=int(lines))
        return self._sendMessage(number, message, framer, b"+OK top of message follows\r\n", retrieve=False)

    def _sendMessage(
        self, number: int, message: MessageInfo, framer: MessageFramer, status: bytes, retrieve: bool
    ) -> defer.Deferred:
        """
        Stream a message from the maildrop through the framer.
        """
        consumer = _FramingConsumer(self, framer, status)
        uid = message.uid

        def sent(_):
            if self._gone():
                return
            consumer.finish()
            if retrieve:
                self._last = max(self._last, number)
                if uid not in self._retrieved:
                    self._retrieved.add(uid)
                    self._retrievedOctets += message.size
                    if not message.seen:
                        self._newlySeen.add(uid)

        def failed(failure: Failure):
            if self._gone():
                return
            if consumer.started:
                # The client already has "+OK" and part of the message: the
                # only honest thing left is to break the connection.
                self.log.failure("message {uid} failed while streaming", failure, uid=uid, peer=self._peer)
                self._endReason = "storage error while streaming"
                self.transport.abortConnection()
            elif failure.check(MessageVanished):
                self._err(f"message {number} was removed by another program")
            else:
                self.log.failure("message {uid} could not be read", failure, uid=uid, peer=self._peer)
                self._err(f"[SYS/TEMP] message {number} cannot be read now, try again later")

        d = defer.maybeDeferred(self._maildrop.sendMessage, uid, consumer)
        d.addCallbacks(sent, failed)
        return d

    def do_DELE(self, argument: bytes) -> None:
        """
        DELE n: mark a message deleted; it is removed only at QUIT.
        """
        number, message = self._message(argument)
        self._deleted.add(number - 1)
        self._liveCount -= 1
        self._liveOctets -= message.size
        self._ok(f"message {number} deleted")

    def do_RSET(self) -> None:
        """
        RSET: unmark every deleted message.
        """
        self._deleted.clear()
        self._liveCount, self._liveOctets = len(self._messages), self._totalOctets
        self._last = self._initialLast
        count, octets = self._totals()
        self._ok(f"maildrop has {count} messages ({octets} octets)")

    def do_LAST(self) -> None:
        """
        LAST (RFC 1225): the highest message number retrieved.
        """
        self._ok(f"{self._last} is the last read message.")

    def do_NOOP(self) -> None:
        """
        NOOP: nothing.
        """
        self._ok()

    def do_QUIT(self):
        """
        QUIT: end the session; after a login, apply the deletions first.
        """
        self._endReason = "quit"
        if self.state is State.AUTHORIZATION:
            self._ok("popsrv signing off")
            self._close("quit")
            return None
        self.state = State.UPDATE
        return defer.ensureDeferred(self._update())

    async def _update(self) -> None:
        """
        The UPDATE state: commit deletions and seen marks, release, close.
        """
        messages = self._messages
        deleted = frozenset(messages[index].uid for index in self._deleted)
        seen = frozenset(self._newlySeen - deleted)
        self._committing = True
        try:
            if deleted or seen:
                await defer.maybeDeferred(self._maildrop.commit, deleted, seen)
        except Exception:
            self.log.failure("could not apply the deletions of {user}", user=self._maildrop.name, peer=self._peer)
            self._endReason = "update failed"
            self._err("[SYS/TEMP] could not remove the deleted messages, try again later")
        else:
            self._deletedCount = len(deleted)
            left = len(self._messages) - len(deleted)
            if left:
                self._ok(f"popsrv signing off ({_count(left, 'message')} left)")
            else:
                self._ok("popsrv signing off (maildrop empty)")
        finally:
            self._committing = False
        self._endSession()
        if not self._lost:
            self._close(self._endReason)

    def _endSession(self) -> None:
        """
        Release the maildrop, once.
        """
        maildrop, self._maildrop = self._maildrop, None
        if maildrop is None:
            return
        try:
            maildrop.release()
        except Exception:
            self.log.failure("could not release the maildrop of {user}", user=maildrop.name)
        if self._logout is not None:
            self._logout()


class POP3Factory(Factory):
    """
    Builds POP3 sessions that log users in through a twisted.cred portal
    whose realm provides L{IMaildrop} avatars.

    @ivar portal: the portal logins go through.
    @ivar hostname: the host name in the APOP challenge.
    @ivar timeout: seconds of inactivity before a session is closed.
    @ivar clock: where time comes from (and timers are set).
    @ivar authFailureDelay: seconds after a PASS or APOP command at which a
        failed login is answered.
    @ivar tls: the L{TLSSettings} of STLS, or L{None} to offer no STLS.
    @ivar policy: the L{LoginPolicy} (plaintext logins, login delay).
    @ivar expire: the EXPIRE capability's days, or L{None} for NEVER.
    """

    protocol = POP3Protocol
    noisy = False

    def __init__(
        self,
        portal: Portal,
        hostname: Optional[str] = None,
        timeout: int = DEFAULT_TIMEOUT,
        clock: Optional[IReactorTime] = None,
        randomToken: Callable[[], str] = lambda: secrets.token_hex(12),
        authFailureDelay: float = AUTH_FAILURE_DELAY,
        tls: Optional[TLSSettings] = None,
        policy: Optional[LoginPolicy] = None,
        expire: Optional[int] = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.portal = portal
        host = (hostname or socket.gethostname()).encode("ascii", "replace")
        self.hostname = _CHALLENGE_HOST.sub(b"", host) or b"localhost"
        self.timeout = timeout
        self.authFailureDelay = authFailureDelay
        self.tls = tls
        self.policy = policy or LoginPolicy()
        self.expire = expire
        self.clock = clock
        self._randomToken = randomToken

    def makeChallenge(self) -> bytes:
        """
        Return a new APOP challenge, C{<random.time@hostname>}: unique,
        unpredictable, and made only of C{A-Za-z0-9.@_+/-} inside the
        brackets.
        """
        token = _CHALLENGE_HOST.sub(b"", self._randomToken().encode("ascii", "replace"))
        return b"<%s.%d@%s>" % (token, int(self.clock.seconds()), self.hostname)

    def buildProtocol(self, addr) -> POP3Protocol:
        """
        Make the protocol for one connection.
        """
        return self.protocol(self)
