"""
The log events of one POP3 connection, in one place: their names (the
C{event} key) and fields are a contract with operators (README, "Logging")
and with the metrics, which count them.

Every event of a session carries the same C{session} id, so that one
grep finds a session's whole story, across C{--workers} processes too.
"""

from __future__ import annotations

import secrets
from typing import Any, Dict, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["NAMESPACE", "SessionLog", "SessionLogger"]

# The namespace of a session's events (the protocol's, as it always was).
NAMESPACE = "popsrv.pop3.protocol.POP3Protocol"


class SessionLogger(Logger):
    """
    A logger that adds C{session=ID} to each event it emits.
    """

    def __init__(self, namespace: str, session: str) -> None:
        super().__init__(namespace)
        self.session = session

    def emit(self, level: Any, format: Optional[str] = None, **kwargs: Any) -> None:
        """Emit an event, with the session's id."""
        kwargs.setdefault("session", self.session)
        super().emit(level, format, **kwargs)


class SessionLog:
    """
    The events of one connection, from its connect to its session's end.

    @ivar id: the session's id, random and short.
    @ivar log: the logger of every event of the session (for the login
        attempt and the opened maildrop, which log their own).
    @ivar peer: the client, C{host:port}, once connected.
    """

    def __init__(self, listener: str, clock: IReactorTime) -> None:
        self.id = secrets.token_urlsafe(9)
        self.log = SessionLogger(NAMESPACE, self.id)
        self.listener = listener
        self.peer = ""
        self._clock = clock
        self._started = clock.seconds()

    def connected(self, peer: str, tls: bool) -> None:
        """A client connected (and was admitted)."""
        self.peer = peer
        self._started = self._clock.seconds()
        self.log.info(
            "connection from {peer} [session {session}]", peer=peer, listener=self.listener, tls=tls, event="connect",
        )

    def loggedIn(self, user: str, mechanism: str, count: int, octets: int, tls: bool) -> None:
        """A login succeeded: the maildrop is locked."""
        self.log.info(
            "{user} logged in from {peer} with {mechanism}, {count} messages ({octets} octets)",
            user=user, peer=self.peer, count=count, octets=octets, mechanism=mechanism, tls=tls, event="login",
        )

    def idle(self) -> None:
        """The session was idle too long."""
        self.log.info("closing idle session from {peer}", peer=self.peer, event="timeout")

    def tlsStarted(self) -> None:
        """STLS started TLS."""
        self.log.info("TLS started with {peer}", peer=self.peer, event="stls")

    def tlsInjection(self, count: int) -> None:
        """Octets sent after STLS, before the handshake, were discarded."""
        self.log.warn(
            "discarded {count} octets {peer} sent before the TLS handshake", count=count, peer=self.peer,
            event="stls-injection",
        )

    def tlsFailed(self, why: str) -> None:
        """The TLS connection failed (a handshake refused, say): why."""
        self.log.info("TLS with {peer} failed: {why}", peer=self.peer, why=why, event="tls-failed")

    def unexpected(self, failure: Failure) -> None:
        """A command failed in a way nothing expected (a bug)."""
        self.log.failure("unexpected error in POP3 command", failure, peer=self.peer)

    def ended(self, reason: str, summary: Dict[str, object]) -> None:
        """The connection is closed: the session's figures."""
        self.log.info(
            "session of {user} from {peer} ended ({reason}): top {top}, retrieved {retrieved} messages "
            "({retrievedOctets} octets), deleted {deleted} ({deletedOctets} octets), maildrop "
            "{messagesBefore}/{octetsBefore} -> {messagesAfter}/{octetsAfter}, {duration:.3f}s [session {session}]",
            peer=self.peer, reason=reason, duration=self._clock.seconds() - self._started,
            listener=self.listener, event="session-end", **summary,
        )
