"""
The queue in front of credential checks: at most so many logins are
checked at once; the others wait their turn, served address by address in
turn (round robin), so a flood from one address cannot starve the others;
a waiting login whose client has gone is dropped when its turn comes,
without being checked.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Deque, Dict, Tuple

from twisted.internet import defer

from popsrv.errors import CredentialsUnavailable
from popsrv.scoreboard import addressKey

__all__ = ["ClientGone", "DEFAULT_CONCURRENCY", "DEFAULT_MAX_WAITING", "DEFAULT_MAX_WAITING_PER_ADDRESS", "LoginQueue"]

DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_WAITING = 256
DEFAULT_MAX_WAITING_PER_ADDRESS = 16

_Waiter = Tuple["defer.Deferred[None]", Callable[[], bool]]


class ClientGone(Exception):
    """
    The client of a waiting check left before its turn: it was dropped.
    """


class LoginQueue:
    """
    Admits credential checks, C{concurrency} at a time, fairly between
    client addresses.

    @ivar concurrency: checks at once.
    @ivar maxWaiting: waiting checks in all, beyond which more are refused.
    @ivar maxWaitingPerAddress: waiting checks of one address, beyond which
        that address's are refused.
    """

    def __init__(
        self,
        concurrency: int = DEFAULT_CONCURRENCY,
        maxWaiting: int = DEFAULT_MAX_WAITING,
        maxWaitingPerAddress: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
    ) -> None:
        self.concurrency = concurrency
        self.maxWaiting = maxWaiting
        self.maxWaitingPerAddress = maxWaitingPerAddress
        self.running = 0
        self._waiting: OrderedDict[bytes, Deque[_Waiter]] = OrderedDict()
        self._count = 0

    @property
    def waiting(self) -> int:
        """Checks waiting for their turn."""
        return self._count

    def enter(self, host: str, gone: Callable[[], bool]) -> defer.Deferred[None]:
        """
        Wait for the turn of a check for a client at C{host}; C{gone} tells
        whether that client has left.  The C{Deferred} fires when the check
        may run (then call L{leave} when it is done); it fails with
        L{CredentialsUnavailable} if too many wait, or with L{ClientGone}
        if the client left before its turn.
        """
        if self.running < self.concurrency and not self._count:
            self.running += 1
            return defer.succeed(None)
        key = addressKey(host)
        queue = self._waiting.get(key)
        if self._count >= self.maxWaiting or (queue is not None and len(queue) >= self.maxWaitingPerAddress):
            return defer.fail(CredentialsUnavailable("too many logins are waiting to be checked"))
        if queue is None:
            queue = self._waiting[key] = deque()
        turn: defer.Deferred[None] = defer.Deferred()
        queue.append((turn, gone))
        self._count += 1
        return turn

    def leave(self) -> None:
        """
        A check is done: let the next waiting one run.
        """
        self.running -= 1
        while self._waiting and self.running < self.concurrency:
            key, queue = next(iter(self._waiting.items()))
            turn, gone = queue.popleft()
            self._count -= 1
            if queue:
                self._waiting.move_to_end(key)
            else:
                del self._waiting[key]
            if gone():
                turn.errback(ClientGone())
                continue
            self.running += 1
            turn.callback(None)

    def stats(self) -> Dict[str, int]:
        """Running and waiting checks, for logs and metrics."""
        return {"running": self.running, "waiting": self._count}
