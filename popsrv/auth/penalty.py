"""
The authentication penalty: each failed login from a client address delays
that address's next verdicts, doubling up to a cap, so that guessing
passwords from one address gets slow however many connections it opens,
while its owner is never locked out (a right password still logs in, late
at worst).

A login reserves a time slot before its credentials are checked; slots of
an address are spaced by L{AuthPenalty.delay} of its count (failures, plus
the logins in flight beyond L{AuthPenalty.free}), so parallel guesses are
answered one after another.  A success forgets the address's failures, and
so does a quiet period.  The figures live in the L{Scoreboard}, shared by
every process of the server; waiting blocks nothing but that login.
"""

from __future__ import annotations

from typing import Callable

from popsrv.scoreboard import Row, Scoreboard, TableFull, addressKey

__all__ = ["DEFAULT_CAP", "DEFAULT_FORGET_AFTER", "DEFAULT_FREE", "AuthPenalty"]

DEFAULT_CAP = 15.0
DEFAULT_FORGET_AFTER = 900.0
DEFAULT_FREE = 4


class AuthPenalty:
    """
    Paces the login verdicts of each client address.

    @ivar base: the delay after the first failure, in seconds.
    @ivar cap: the longest delay between two verdicts.
    @ivar free: how many logins of one address may be checked at once
        before those in flight count as failures would.
    @ivar forgetAfter: seconds without a failure after which an address's
        failures are forgotten.
    """

    def __init__(
        self,
        scoreboard: Scoreboard,
        base: float = 1.0,
        cap: float = DEFAULT_CAP,
        free: int = DEFAULT_FREE,
        forgetAfter: float = DEFAULT_FORGET_AFTER,
    ) -> None:
        self.scoreboard = scoreboard
        self.base = base
        self.cap = cap
        self.free = free
        self.forgetAfter = forgetAfter

    def _update(self, host: str, now: float, change: Callable[[Row], None]) -> None:
        """
        Apply a change to C{host}'s row, if it has or can get one.
        """
        try:
            self.scoreboard.update(addressKey(host), now, change)
        except TableFull:
            pass

    def delay(self, count: int) -> float:
        """
        The spacing of verdicts after C{count} failures: none for none,
        then L{base}, doubling, up to L{cap}.
        """
        if count <= 0:
            return 0.0
        return float(min(self.cap, self.base * 2 ** min(count - 1, 32)))

    def reserve(self, host: str, now: float) -> float:
        """
        Reserve the time of the next verdict for a login from C{host}: the
        caller checks the credentials no sooner, and then reports with
        L{failed}, L{succeeded} or L{abandoned}.
        """

        def change(row: Row) -> float:
            if row.failures and now - row.lastFailure > self.forgetAfter:
                row.failures = 0
            count = row.failures + max(0, row.totalPending + 1 - self.free)
            slot = max(now, row.slot + self.delay(count)) if count else now
            row.slot = max(row.slot, slot)
            row.pending[row.column] += 1
            return slot

        try:
            return self.scoreboard.update(addressKey(host), now, change)
        except TableFull:
            # Every row of its set is busy (a server near its connection
            # limit): this login goes unpaced rather than refused.
            return now

    def failed(self, host: str, now: float, reserved: bool = True) -> None:
        """
        A login from C{host} failed (C{reserved}: one that had reserved its
        slot).
        """

        def change(row: Row) -> None:
            if reserved:
                row.pending[row.column] -= 1
            row.failures += 1
            row.lastFailure = now

        self._update(host, now, change)

    def succeeded(self, host: str, now: float) -> None:
        """
        A login from C{host} succeeded: its failures are forgotten.
        """

        def change(row: Row) -> None:
            row.pending[row.column] -= 1
            row.failures = 0
            row.slot = min(row.slot, now)

        self._update(host, now, change)

    def abandoned(self, host: str, now: float) -> None:
        """
        A login from C{host} ended without a verdict (the client left, the
        backend failed).
        """

        def change(row: Row) -> None:
            row.pending[row.column] -= 1

        self._update(host, now, change)
