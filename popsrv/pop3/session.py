"""
One POP3 session as a sans-IO state machine: a command line in, an
L{Effect} out.

The session owns POP3's semantics: the states, numbering, deletion marks,
RSET, LAST, totals, CAPA and the counts that close a session (failed logins,
bad commands).  It never touches a socket, a reactor, a clock, a portal or a
store: what needs them (logging in, streaming a message, applying the
deletions, starting TLS) comes out as an effect for the Twisted glue
(L{popsrv.pop3.protocol}) to carry out, which then reports back
(L{Session.loginSucceeded}, L{Session.updated}, and
L{popsrv.pop3.transaction.Transaction.retrieved}).
So the property tests drive it directly, with generated command sequences.
"""

from __future__ import annotations

import base64
import binascii
from typing import Dict, Iterable, List, Optional, Protocol, Sequence, Union

from twisted.cred.credentials import UsernamePassword

from popsrv import __version__
from popsrv.auth import sasl
from popsrv.auth.credentials import HEX_DIGEST, APOPCredentials, passwordTooLong
from popsrv.messages import MessageInfo, MessageList
from popsrv.pop3 import replies
from popsrv.pop3.commands import Command, CommandError, State, parse
from popsrv.pop3.effects import Authenticate, Effect, LogIn, Reply, StartTLS, Update
from popsrv.pop3.replies import Code
from popsrv.pop3.transaction import Transaction

__all__ = ["Environment", "IllegalTransition", "Session", "decodeBase64"]

MAX_AUTH_FAILURES = 3
MAX_BAD_COMMANDS = 20

_TRANSITIONS = {
    State.GREETING: {State.AUTHORIZATION, State.CLOSED},
    State.AUTHORIZATION: {State.TRANSACTION, State.CLOSED},
    State.TRANSACTION: {State.UPDATE, State.CLOSED},
    State.UPDATE: {State.CLOSED},
    State.CLOSED: set(),
}


class IllegalTransition(Exception):
    """
    The session was asked to move between states that POP3 does not join:
    a bug in the caller, never the client's doing.
    """


class Environment(Protocol):
    """
    What a session needs to know of its connection and server, asked when
    needed (TLS changes the answers during a session).
    """

    def secure(self) -> bool:
        """Whether the connection runs over TLS."""

    def stlsAvailable(self) -> bool:
        """Whether STLS can start TLS on this connection now."""

    def plaintextAllowed(self) -> bool:
        """Whether a password may be sent in plaintext now."""

    def stlsWouldAllowPlaintext(self) -> bool:
        """Whether plaintext passwords would be allowed after STLS."""

    def acceptsPasswords(self) -> bool:
        """Whether the portal takes user names with passwords (USER/PASS)."""

    def acceptsAPOP(self) -> bool:
        """Whether the portal takes APOP's digests."""

    def mechanisms(self) -> Sequence[sasl.Mechanism]:
        """The SASL mechanisms whose credentials the portal takes."""


def _isUTF8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decodeBase64(data: bytes) -> bytes:
    """
    Decode a client's base64 SASL data strictly.

    @raise CommandError: it is not base64.
    """
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise CommandError(replies.INVALID_BASE64, malformed=True)


class Session:
    """
    The state of one POP3 session and the rules that change it.

    @ivar state: the session's L{State}.
    @ivar challenge: the APOP challenge of the greeting.
    @ivar user: the maildrop's name once logged in, else C{"-"}.
    @ivar failures: failed logins so far.
    @ivar abortedAuth: AUTH exchanges the client cancelled.
    @ivar badCommands: malformed command lines in a row (a command that
        succeeds resets the count); the L{MAX_BAD_COMMANDS}th closes the
        session.
    """

    def __init__(
        self,
        environment: Environment,
        challenge: bytes,
        expire: Optional[int] = None,
        loginDelay: Optional[int] = None,
    ) -> None:
        self.environment = environment
        self.challenge = challenge
        self.expire = expire
        self.loginDelay = loginDelay
        self.state = State.GREETING
        self.user = "-"
        self.failures = 0
        self.badCommands = 0
        self.abortedAuth = 0
        self._userName: Optional[bytes] = None
        self.transaction = Transaction(())
        self.deletedCount = 0
        self.deletedOctets = 0

    # The life cycle

    def _moveTo(self, state: State) -> None:
        """
        Move to C{state}: the one place where the state changes.

        @raise IllegalTransition: POP3 does not go from the current state
            to C{state}.
        """
        if state not in _TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.value} -> {state.value}")
        self.state = state

    def greet(self) -> bytes:
        """
        Start the session: the greeting, with the APOP challenge at the end
        of the line (as in RFC 1939's example) when APOP can be used.
        """
        self._moveTo(State.AUTHORIZATION)
        if self.environment.acceptsAPOP():
            return replies.ok(replies.GREETING + " " + self.challenge.decode("ascii"))
        return replies.ok(replies.GREETING)

    def close(self) -> None:
        """
        The connection is gone or going.  In UPDATE the deletions being
        applied finish first (L{updated} closes).
        """
        if self.state is not State.UPDATE and self.state is not State.CLOSED:
            self._moveTo(State.CLOSED)

    def summary(self) -> Dict[str, object]:
        """
        The session's figures for its closing log event, as Dovecot's
        logout line gives them: C{user}; C{top} (TOP commands answered);
        C{retrieved} (different messages RETR sent whole) and
        C{retrievedOctets}; C{deleted} and C{deletedOctets} (deletions
        applied at QUIT); C{messagesBefore} and C{octetsBefore} (the
        maildrop at login) and C{messagesAfter} and C{octetsAfter} (after
        QUIT, or as before when no deletion was applied).
        """
        transaction = self.transaction
        before = transaction.initialTotals
        after = transaction.totals() if self.deletedCount else before
        return {
            "user": self.user, "top": transaction.topCount, "retrieved": transaction.retrievedCount,
            "retrievedOctets": transaction.retrievedOctets, "deleted": self.deletedCount,
            "deletedOctets": self.deletedOctets, "messagesBefore": before[0], "octetsBefore": before[1],
            "messagesAfter": after[0], "octetsAfter": after[1],
        }

    # Commands

    def receive(self, line: bytes) -> Effect:
        """
        Handle one command line (without its line end).
        """
        if self.state is not State.AUTHORIZATION and self.state is not State.TRANSACTION:
            raise IllegalTransition(f"a command in the {self.state.value} state")
        try:
            command = parse(line, self.state)
            effect = self._run(command)
        except CommandError as error:
            if not error.malformed:
                return Reply(error.reply())
            self.badCommands += 1
            if self.badCommands >= MAX_BAD_COMMANDS:
                return Reply(replies.err(replies.TOO_MANY_BAD_COMMANDS), close="too many bad commands")
            return Reply(error.reply())
        self.badCommands = 0
        return effect

    def _run(self, command: Command) -> Effect:
        name, args = command.name, command.args
        if name == b"USER":
            return self._user(args[0])
        if name == b"PASS":
            return self._pass(args[0])
        if name == b"APOP":
            return self._apop(args[0], args[1])
        if name == b"AUTH":
            return self._auth(args)
        if name == b"STLS":
            return self._stls()
        if name == b"UTF8":
            return Reply(replies.ok(replies.UTF8_ENABLED))
        if name == b"CAPA":
            return Reply(replies.multiline("capability list follows", self.capabilities()))
        if name == b"QUIT":
            return self._quit()
        return self.transaction.handle(name, args)

    # AUTHORIZATION

    def _requirePlaintextAllowed(self) -> None:
        if not self.environment.plaintextAllowed():
            advice = self.environment.stlsWouldAllowPlaintext() and self.environment.stlsAvailable()
            raise CommandError(replies.plaintextRefused(advice), Code.AUTH)

    def _user(self, name: bytes) -> Reply:
        """USER: remember the name; the reply never tells whether it exists."""
        self._requirePlaintextAllowed()
        self._userName = name
        return Reply(replies.ok(replies.SEND_PASSWORD))

    def _pass(self, password: bytes) -> LogIn:
        """PASS: log in with the name USER gave."""
        self._requirePlaintextAllowed()
        if self._userName is None:
            raise CommandError(replies.USER_BEFORE_PASS)
        user, self._userName = self._userName, None
        malformed = b"\0" in password or passwordTooLong(password) or self._malformedName(user)
        return LogIn(UsernamePassword(user, password), user, malformed, "USER/PASS")

    def _apop(self, name: bytes, digest: bytes) -> LogIn:
        """APOP: log in with MD5(challenge + secret)."""
        self._userName = None
        malformed = not HEX_DIGEST.fullmatch(digest) or self._malformedName(name)
        return LogIn(APOPCredentials(self.challenge, name, digest), name, malformed, "APOP")

    @staticmethod
    def _malformedName(user: bytes) -> bool:
        return b"\0" in user or not _isUTF8(user)

    def mechanismsNow(self) -> List[sasl.Mechanism]:
        """
        The SASL mechanisms this session may use now.
        """
        plaintext = self.environment.plaintextAllowed()
        return [m for m in self.environment.mechanisms() if plaintext or not m.plaintext]

    def _auth(self, args: Sequence[bytes]) -> Union[Reply, Authenticate]:
        """AUTH [mechanism [initial-response]] (RFC 5034; bare AUTH as RFC 1734)."""
        if not args:
            names = [m.name.encode("ascii") for m in self.mechanismsNow()]
            return Reply(replies.multiline("methods follow", names))
        mechanism = sasl.mechanism(args[0])
        if mechanism is None or mechanism not in self.environment.mechanisms():
            raise CommandError(replies.unsupportedMechanism(args[0]), malformed=True)
        if mechanism.plaintext:
            self._requirePlaintextAllowed()
        response = None
        if len(args) == 2:
            response = b"" if args[1] == b"=" else decodeBase64(args[1])
        self._userName = None
        return Authenticate(mechanism, response)

    def _stls(self) -> StartTLS:
        """STLS (RFC 2595): a USER given before is forgotten."""
        if self.environment.secure():
            raise CommandError(replies.TLS_ACTIVE)
        if not self.environment.stlsAvailable():
            raise CommandError(replies.STLS_UNAVAILABLE)
        self._userName = None
        return StartTLS(replies.ok(replies.BEGIN_TLS))

    def capabilities(self) -> List[bytes]:
        """
        CAPA's lines (RFC 2449).  They are the same before and after login:
        RFC 2449 (section 5) wants the AUTHORIZATION state's announced in
        both.
        """
        lines = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.environment.plaintextAllowed() and self.environment.acceptsPasswords():
            lines.append(b"USER")
        mechanisms = self.mechanismsNow()
        if mechanisms:
            lines.append(b"SASL " + b" ".join(m.name.encode("ascii") for m in mechanisms))
        if self.environment.stlsAvailable():
            lines.append(b"STLS")
        lines.append(b"EXPIRE NEVER" if self.expire is None else b"EXPIRE %d" % self.expire)
        if self.loginDelay is not None:
            lines.append(b"LOGIN-DELAY %d" % self.loginDelay)
        lines.append(b"UTF8 USER")
        lines.append(b"IMPLEMENTATION popsrv-" + __version__.encode("ascii"))
        return lines

    def loginSucceeded(self, name: str, messages: Union[MessageList, Iterable[MessageInfo]]) -> bytes:
        """
        The portal accepted the credentials and the maildrop C{name} is
        locked, with a snapshot of C{messages}: enter TRANSACTION.

        @return: the reply to send.
        """
        self._moveTo(State.TRANSACTION)
        self.user = name
        self.transaction = Transaction(messages)
        return replies.loggedIn(name, *self.transaction.totals())

    def loginFailed(self) -> Reply:
        """
        A login failed (whatever the reason: the reply must not tell).
        """
        self.failures += 1
        if self.failures >= MAX_AUTH_FAILURES:
            return Reply(replies.CREDENTIALS_REFUSED_CLOSING, close="too many login failures")
        return Reply(replies.CREDENTIALS_REFUSED)

    # TRANSACTION

    def _quit(self) -> Union[Reply, Update]:
        """QUIT: sign off; after login, apply the deletions first (UPDATE)."""
        if self.state is State.AUTHORIZATION:
            self._moveTo(State.CLOSED)
            return Reply(replies.ok(replies.SIGN_OFF), close="quit")
        self._moveTo(State.UPDATE)
        return Update(*self.transaction.marks())

    def updated(self, succeeded: bool) -> bytes:
        """
        The UPDATE state is over: the deletions were applied, or were not.

        @return: the reply to send.
        """
        if self.state is not State.UPDATE:
            raise IllegalTransition(f"an update in the {self.state.value} state")
        self._moveTo(State.CLOSED)
        if not succeeded:
            return replies.UPDATE_FAILED
        self.deletedCount = self.transaction.deletedCount
        self.deletedOctets = self.transaction.deletedOctets
        return replies.signedOff(self.transaction.remaining)
