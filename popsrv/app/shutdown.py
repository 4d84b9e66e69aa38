"""
A graceful stop (SIGTERM): the listeners stop accepting at once (they are
services of their own), open sessions have C{--shutdown-grace} seconds to
finish (a session that QUITs meanwhile has its deletions applied), then the
rest are closed without applying any deletion, as RFC 1939 wants of a
session that never said QUIT.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from popsrv.pop3.factory import POP3Factory

__all__ = ["DEFAULT_SHUTDOWN_GRACE", "GracefulShutdown"]

DEFAULT_SHUTDOWN_GRACE = 10.0
# How often the sessions still open are counted during the grace.
_POLL = 0.05

log = Logger()


class GracefulShutdown(Service):
    """
    When the service stops, waits up to C{grace} seconds for the sessions
    of C{factories} to end, then closes those still open.
    """

    def __init__(self, factories: Iterable[POP3Factory], clock: IReactorTime, grace: float) -> None:
        self.factories = list(factories)
        self.clock = clock
        self.grace = grace
        self._waiting: Optional[task.LoopingCall] = None

    def _open(self) -> list[Any]:
        return [connection for factory in self.factories for connection in factory.connections]

    def stopService(self) -> defer.Deferred[None]:
        """
        Wait for the open sessions, for the grace at most; then close the
        others.
        """
        super().stopService()
        left = len(self._open())
        if not left:
            return defer.succeed(None)
        log.info(
            "stopping: {count} sessions have {grace:g} s to finish", count=left, grace=self.grace,
            event="shutdown",
        )
        deadline = self.clock.seconds() + self.grace
        done: defer.Deferred[None] = defer.Deferred()

        def check() -> None:
            still = self._open()
            if still and self.clock.seconds() < deadline:
                return
            assert self._waiting is not None
            self._waiting.stop()
            for connection in still:
                connection.transport.abortConnection()
            if still:
                log.info(
                    "closed {count} sessions at the end of the shutdown grace, deleting nothing",
                    count=len(still), event="shutdown-closed",
                )
            done.callback(None)

        self._waiting = task.LoopingCall(check)
        self._waiting.clock = self.clock
        self._waiting.start(_POLL, now=False)
        return done
