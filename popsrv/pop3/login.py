"""
One login attempt: credentials (from USER/PASS, APOP, or a SASL exchange
run here) through the twisted.cred portal, then the login delay, the
maildrop's lock and its snapshot.

The attempt ends in an outcome for the protocol: L{Accepted} (the maildrop
is locked), L{Rejected} (wrong credentials: the protocol paces and counts
the failure), L{Refused} (a reply to send as it is, such as C{[IN-USE]}), or
C{None} when there is nothing left to say (the connection is gone).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Tuple, Union

import attr
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from popsrv.auth import sasl
from popsrv.auth.queue import ClientGone
from popsrv.errors import CredentialsUnavailable, MaildropLocked, MaildropUnusable
from popsrv.interfaces import IMaildrop, IScramParameters
from popsrv.messages import MessageInfo, MessageList
from popsrv.pop3 import replies
from popsrv.pop3.commands import MAX_AUTH_OCTETS, CommandError
from popsrv.pop3.effects import Authenticate, LogIn, Reply
from popsrv.pop3.policy import LoginPolicy
from popsrv.pop3.session import Session, decodeBase64

if TYPE_CHECKING:  # pragma: no cover
    from popsrv.pop3.factory import POP3Factory

__all__ = ["MAX_FREE_ABORTS", "Accepted", "Conversation", "LoginAttempt", "Outcome", "Refused", "Rejected"]

# Cancelled AUTH exchanges a session may have before each further one
# counts as a failed login.
MAX_FREE_ABORTS = 3


class Conversation(Protocol):
    """
    The connection, as a login attempt sees it.
    """

    def sendLine(self, line: bytes) -> None:
        """Send one line (without its line end)."""

    def readLine(self) -> defer.Deferred[Optional[bytes]]:
        """The client's next line, or C{None} if the connection goes first."""

    def gone(self) -> bool:
        """Whether the connection is closed or closing."""


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Accepted:
    """
    Logged in: the maildrop is locked, with a snapshot of its messages.

    @ivar logout: the realm's logout, to call after releasing the maildrop.
    """

    maildrop: IMaildrop
    logout: Callable[[], None]
    snapshot: Union[MessageList, list[MessageInfo]]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Rejected:
    """
    The credentials were refused (or malformed): to be answered, paced from
    C{started}, with the same reply whatever C{why} says.
    """

    user: bytes
    why: str
    started: float
    penalized: bool = False


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Refused:
    """
    The attempt ended with this reply, already logged where it should be.
    """

    reply: bytes


Outcome = Optional[Union[Accepted, Rejected, Refused]]


class LoginAttempt:
    """
    One login attempt of a session.

    @param log: the session's logger (its events keep one namespace).
    @param method: how the client logs in, for logs.
    @param host: the client's address, which the penalty and the queue
        know it by.
    """

    def __init__(
        self, factory: POP3Factory, session: Session, conversation: Conversation, log: Logger, peer: str,
        method: str, host: str = "",
    ) -> None:
        self._portal: Portal = factory.portal
        self._clock: IReactorTime = factory.clock
        self._policy: LoginPolicy = factory.policy
        self._failureDelay = factory.authFailureDelay
        self._penalty = factory.penalty
        self._queue = factory.loginQueue
        self._host = host
        self._session = session
        self._challenge = session.challenge
        self._conversation = conversation
        self._log = log
        self._peer = peer
        self._method = method

    async def run(self, effect: Union[LogIn, Authenticate]) -> Union[Accepted, Reply, None]:
        """
        Carry out a login effect to its end: L{Accepted}, or the reply to
        send (a failure is answered at the same time after the command
        whatever the checker did, and the same way whatever the reason, so
        neither tells whether the user exists), or C{None}.
        """
        if isinstance(effect, LogIn):
            outcome = await self.withCredentials(effect)
        else:
            outcome = await self.withSASL(effect)
        if isinstance(outcome, Refused):
            return Reply(outcome.reply)
        if not isinstance(outcome, Rejected):
            return outcome
        if self._penalty is not None and not outcome.penalized:
            self._penalty.failed(self._host, self._clock.seconds(), reserved=False)
        reply = self._session.loginFailed()
        self._log.info(
            "login failed for {user} from {peer} with {mechanism}: {why}",
            user=replies.printable(outcome.user, 64), peer=self._peer, why=outcome.why,
            failures=self._session.failures, mechanism=self._method, event="login-failed",
        )
        wait = outcome.started + self._failureDelay - self._clock.seconds()
        if wait > 0:
            await task.deferLater(self._clock, wait, lambda: None)
        return reply

    async def withCredentials(self, login: LogIn) -> Outcome:
        """
        Log in with USER/PASS's or APOP's credentials.
        """
        started = self._clock.seconds()
        if login.malformed:
            return Rejected(login.user, "malformed credentials", started)
        return await self._logIn(login.credentials, login.user, started, None)

    async def withSASL(self, auth: Authenticate) -> Outcome:
        """
        Run a SASL exchange to its credentials, then log in with them.  A
        failure is paced from the client's last response, as a failed PASS
        is from its command.
        """
        mechanism = auth.mechanism
        response = auth.response
        exchange = mechanism.exchange(self._challenge, self._scramLookup())
        while True:
            started = self._clock.seconds()
            try:
                step = exchange.step(response)
                if isinstance(step, defer.Deferred):
                    step = await step
            except sasl.SASLError as error:
                return Rejected(exchange.user, f"{mechanism.name}: {error}", started)
            except Exception:
                return self._backendFailed(Failure(), exchange.user)
            if not isinstance(step, sasl.Challenge):
                break
            self._conversation.sendLine(b"+ " + base64.b64encode(step.data))
            line = await self._conversation.readLine()
            if line is None:
                return None
            if line == b"*":
                self._session.abortedAuth += 1
                if self._session.abortedAuth > MAX_FREE_ABORTS:
                    # Aborting is free a few times: then it counts as the
                    # failure it hides (a probe of salts, say).
                    why = f"{mechanism.name}: AUTH aborted {self._session.abortedAuth} times"
                    return Rejected(exchange.user, why, started)
                return Refused(replies.err(replies.AUTH_CANCELLED))
            if len(line) + 2 > MAX_AUTH_OCTETS:
                # The AUTH command's own limit holds for its continuation
                # lines: a response that long is nobody's credentials.
                why = f"{mechanism.name}: response over {MAX_AUTH_OCTETS} octets"
                return Rejected(exchange.user, why, self._clock.seconds())
            try:
                response = decodeBase64(line)
            except CommandError as error:
                return Refused(error.reply())
        return await self._logIn(step, step.username, started, exchange)

    def _scramLookup(self) -> Any:
        """
        The lookup of stored SCRAM salts: that of the checker that verifies
        SCRAM's credentials, if it has one.
        """
        checker = self._portal.checkers.get(IUsernameHashedPassword)
        if IScramParameters.providedBy(checker):
            return checker.scramParameters
        return None

    def _backendFailed(self, failure: Failure, user: bytes) -> Refused:
        """
        The credentials backend could not check a login: the client may try
        again later.  A backend that says it is unavailable gets one log
        line; anything else is logged with its traceback.
        """
        if failure.check(CredentialsUnavailable):
            self._log.warn(
                "authentication unavailable for {user} from {peer}: {why}",
                user=replies.printable(user, 64), peer=self._peer, why=str(failure.value) or "no reason given",
                mechanism=self._method, event="auth-unavailable",
            )
        else:
            self._log.failure(
                "authentication backend failed for {user!r}", failure, user=user, peer=self._peer,
                why=failure.getErrorMessage(), mechanism=self._method, event="auth-unavailable",
            )
        return Refused(replies.AUTH_UNAVAILABLE)

    async def _waitForTurn(self) -> bool:
        """
        Wait for the penalty's slot of this address, then for a turn in the
        queue of checks.

        @return: whether the check may run now (not if the client left).
        @raise CredentialsUnavailable: too many checks are waiting.
        """
        if self._penalty is not None:
            now = self._clock.seconds()
            slot = self._penalty.reserve(self._host, now)
            if slot > now:
                self._log.info(
                    "login from {peer} waits {delay:.1f} s (penalty)", peer=self._peer, delay=slot - now,
                    event="penalty",
                )
                await task.deferLater(self._clock, slot - now, lambda: None)
        if self._conversation.gone():
            return False
        try:
            await self._queue.enter(self._host, self._conversation.gone)
        except ClientGone:
            return False
        return True

    def _settle(self, verdict: str) -> None:
        """
        Tell the penalty how a login that reserved its slot ended:
        C{"failed"}, C{"succeeded"} or C{"abandoned"}.
        """
        if self._penalty is None:
            return
        now = self._clock.seconds()
        if verdict == "failed":
            self._penalty.failed(self._host, now)
        elif verdict == "succeeded":
            self._penalty.succeeded(self._host, now)
        else:
            self._penalty.abandoned(self._host, now)

    async def _check(
        self, credentials: Any, user: bytes, started: float,
    ) -> Union[Tuple[Any, Callable[[], None]], Outcome]:
        """
        Check the credentials in their turn, and tell the penalty how it
        went.

        @return: the avatar and its logout, or the outcome that ends the
            attempt.
        """
        try:
            if not await self._waitForTurn():
                self._settle("abandoned")
                return None
        except Exception:
            failure = Failure()
            self._settle("abandoned")
            return self._backendFailed(failure, user)
        try:
            _, avatar, logout = await self._portal.login(credentials, None, IMaildrop)
        except (UnauthorizedLogin, UnhandledCredentials, UnicodeError) as error:
            self._settle("failed")
            return Rejected(user, str(error) or error.__class__.__name__, started, penalized=True)
        except Exception:
            failure = Failure()
            self._settle("abandoned")
            return self._backendFailed(failure, user)
        finally:
            self._queue.leave()
        self._settle("succeeded")
        return avatar, logout

    async def _logIn(self, credentials: Any, user: bytes, started: float, exchange: Any) -> Outcome:
        checked = await self._check(credentials, user, started)
        if not isinstance(checked, tuple):
            return checked
        avatar, logout = checked
        maildrop = IMaildrop(avatar)
        successData = exchange.successData() if exchange is not None else None
        if successData is not None:
            # RFC 5034: data that comes with success is sent as one more
            # challenge, which the client answers with an empty line.
            self._conversation.sendLine(b"+ " + base64.b64encode(successData))
            if await self._conversation.readLine() != b"":
                logout()
                return Refused(replies.err(replies.AUTH_CANCELLED))
        try:
            snapshot = await self._openMaildrop(maildrop)
        except _RefusedError as refusal:
            logout()
            return Refused(refusal.reply)
        return Accepted(maildrop, logout, snapshot)

    async def _openMaildrop(self, maildrop: IMaildrop) -> Union[MessageList, list[MessageInfo]]:
        """
        Apply the login delay, lock and snapshot the maildrop.

        @raise _RefusedError: with the refusal to send, once logged (the
            maildrop is not locked then).
        """
        name = maildrop.name
        if not self._policy.mayLogIn(name, self._clock.seconds()):
            self._log.info("{user} logged in again too soon", user=name, peer=self._peer, event="login-delay")
            raise _RefusedError(replies.loginDelay(self._policy.loginDelay))
        try:
            await defer.maybeDeferred(maildrop.lock)
        except MaildropLocked:
            self._log.info("maildrop of {user} is in use", user=name, peer=self._peer, event="in-use")
            raise _RefusedError(replies.MAILDROP_IN_USE)
        except MaildropUnusable as error:
            self._log.error(
                "maildrop of {user} is unusable: {error}", user=name, error=str(error), peer=self._peer,
                operation="open", event="storage-error",
            )
            raise _RefusedError(replies.MAILDROP_UNUSABLE)
        except Exception:
            self._log.failure(
                "could not lock the maildrop of {user}", user=name, peer=self._peer, operation="lock",
                event="storage-error",
            )
            raise _RefusedError(replies.MAILDROP_UNAVAILABLE)
        try:
            listing = maildrop.listMessages()
            snapshot = await listing if isinstance(listing, defer.Deferred) else listing
            # The login delay counts from here: a login that got its maildrop.
            self._policy.loggedIn(name, self._clock.seconds())
            return snapshot if isinstance(snapshot, MessageList) else list(snapshot)
        except Exception:
            maildrop.release()
            self._log.failure(
                "could not list the maildrop of {user}", user=name, peer=self._peer, operation="list",
                event="storage-error",
            )
            raise _RefusedError(replies.MAILDROP_UNAVAILABLE)


class _RefusedError(Exception):
    """
    Ends opening a maildrop with a reply.
    """

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply
