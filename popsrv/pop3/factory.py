"""
L{POP3Factory}: a server's settings, shared by its POP3 sessions.
"""

from __future__ import annotations

import copy
import re
import secrets
import socket
from typing import Callable, Collection, Optional, Set

from twisted.cred.portal import Portal
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory

from popsrv.auth.penalty import AuthPenalty
from popsrv.auth.queue import LoginQueue
from popsrv.pop3.limits import ConnectionLimits
from popsrv.pop3.policy import LoginPolicy
from popsrv.pop3.protocol import POP3Protocol
from popsrv.tls import TLSSettings

__all__ = ["AUTH_FAILURE_DELAY", "CHALLENGE_BITS", "DEFAULT_LOGIN_TIMEOUT", "DEFAULT_TIMEOUT", "POP3Factory"]

# RFC 1939's ten minutes, once logged in; before, a minute is plenty.
DEFAULT_TIMEOUT = 600
DEFAULT_LOGIN_TIMEOUT = 60
AUTH_FAILURE_DELAY = 1.0
_CHALLENGE_HOST = re.compile(rb"[^A-Za-z0-9.@_+/-]")
_NOT_DIGITS = re.compile(rb"[^0-9]")
# The randomness of an APOP challenge (written in decimal, up to 29 digits).
CHALLENGE_BITS = 96


class POP3Factory(Factory):
    """
    Builds POP3 sessions that log users in through a twisted.cred portal
    whose realm provides L{popsrv.interfaces.IMaildrop} avatars.

    @ivar portal: the portal logins go through.
    @ivar hostname: the host name in the APOP challenge.
    @ivar timeout: seconds of inactivity before a logged-in session is
        closed.
    @ivar loginTimeout: seconds of inactivity before a session that has not
        logged in is closed.
    @ivar clock: where time comes from (and timers are set).
    @ivar authFailureDelay: seconds after a PASS or APOP command at which a
        failed login is answered.
    @ivar tls: the L{TLSSettings} of STLS, or C{None} to offer no STLS.
    @ivar policy: the L{LoginPolicy} (plaintext logins, login delay).
    @ivar expire: the EXPIRE capability's days, or C{None} for NEVER.
    @ivar limits: the L{ConnectionLimits} new connections must fit, or
        C{None} for none.
    @ivar penalty: the L{AuthPenalty} that paces each address's failed
        logins, or C{None} for none.
    @ivar loginQueue: the L{LoginQueue} credential checks wait in.
    @ivar saslMechanisms: the names of the SASL mechanisms to offer (those
        of them that the checkers can verify), or C{None} for all.
    @ivar connections: the connections open now (admitted ones), for a
        graceful shutdown to wait for and then close.
    @ivar timeCommands: whether sessions time their commands, for the
        C{commands} of their C{session-end} event (see
        L{popsrv.pop3.timing}).
    @ivar listener: the name of the listener the connections come through,
        in their log events (C{twistd popsrv} names each by its address);
        C{"-"} if none is given.
    """

    protocol = POP3Protocol
    noisy = False

    def __init__(
        self,
        portal: Portal,
        hostname: Optional[str] = None,
        timeout: int = DEFAULT_TIMEOUT,
        clock: Optional[IReactorTime] = None,
        randomToken: Callable[[], str] = lambda: str(secrets.randbits(CHALLENGE_BITS)),
        authFailureDelay: float = AUTH_FAILURE_DELAY,
        tls: Optional[TLSSettings] = None,
        policy: Optional[LoginPolicy] = None,
        expire: Optional[int] = None,
        loginTimeout: Optional[int] = DEFAULT_LOGIN_TIMEOUT,
        limits: Optional[ConnectionLimits] = None,
        penalty: Optional[AuthPenalty] = None,
        loginQueue: Optional[LoginQueue] = None,
        saslMechanisms: Optional[Collection[str]] = None,
        listener: str = "-",
        timeCommands: bool = False,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.portal = portal
        host = (hostname or socket.gethostname()).encode("ascii", "replace")
        self.hostname = _CHALLENGE_HOST.sub(b"", host) or b"localhost"
        self.timeout = timeout
        self.loginTimeout = timeout if loginTimeout is None else min(timeout, loginTimeout)
        self.limits = limits
        self.penalty = penalty
        self.loginQueue = loginQueue or LoginQueue()
        self.saslMechanisms = None if saslMechanisms is None else frozenset(saslMechanisms)
        self.connections: Set[POP3Protocol] = set()
        self.authFailureDelay = authFailureDelay
        self.tls = tls
        self.policy = policy or LoginPolicy()
        self.expire = expire
        self.clock: IReactorTime = clock
        self.listener = listener
        self.timeCommands = timeCommands
        self._randomToken = randomToken

    def forListener(self, listener: str) -> POP3Factory:
        """
        A factory for the connections of one more listener, named
        C{listener}: the same settings, and the same shared state
        (connection limits, penalty, login queue, login delays).
        """
        factory = copy.copy(self)
        factory.listener = listener
        return factory

    def admit(self, connection: POP3Protocol, host: str, peer: str) -> bool:
        """
        Admit a new connection from C{host} (C{peer}, for logs) within the
        limits, or turn it away at once; an admitted one is counted among
        L{connections} until L{release}.
        """
        if self.limits is not None:
            assert connection.transport is not None
            if not self.limits.enter(connection.transport, host, peer, self.clock.seconds()):
                return False
        self.connections.add(connection)
        return True

    def release(self, connection: POP3Protocol, host: str) -> None:
        """
        An admitted connection from C{host} closed (nothing happens for one
        that was not admitted).
        """
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        if self.limits is not None:
            self.limits.leave(host, self.clock.seconds())

    def makeChallenge(self) -> bytes:
        """
        Return a new APOP challenge in the shape of RFC 1939's example and
        qpopper's, C{<digits.digits@hostname>} (some clients recognise no
        other): a random number of L{CHALLENGE_BITS} bits, then the time;
        unique, unpredictable, and made only of C{A-Za-z0-9.@_+/-} inside
        the brackets.
        """
        token = _NOT_DIGITS.sub(b"", self._randomToken().encode("ascii", "replace")) or b"0"
        return b"<%s.%d@%s>" % (token, int(self.clock.seconds()), self.hostname)

    def buildProtocol(self, addr: Optional[IAddress]) -> POP3Protocol:
        """
        Make the protocol for one connection.
        """
        protocol: POP3Protocol = self.protocol(self)
        return protocol
