"""
Tests for L{popsrv.auth.penalty}: the delays, the spacing of parallel and
sequential guesses from one address, and what forgets an address.
"""

from __future__ import annotations

import heapq
from typing import Iterator, List

import pytest

from popsrv.auth.penalty import AuthPenalty
from popsrv.scoreboard import Scoreboard

GUESSER = "192.0.2.66"
OWNER = "198.51.100.7"
CHECK = 0.05
REPLY_DELAY = 1.0


@pytest.fixture
def penalty() -> Iterator[AuthPenalty]:
    board = Scoreboard.create(columns=1, capacity=64)
    yield AuthPenalty(board)
    board.close()


def test_delaysDoubleUpToTheCap(penalty: AuthPenalty) -> None:
    """No delay without failures; then 1 s, doubling, up to 15 s."""
    assert [penalty.delay(n) for n in range(8)] == [0, 1, 2, 4, 8, 15, 15, 15]
    assert penalty.delay(10**6) == 15


def guessInParallel(penalty: AuthPenalty, guessers: int, seconds: float) -> List[float]:
    """
    Simulate C{guessers} connections from one address, each sending a wrong
    password again as soon as it has its answer (answered at least
    REPLY_DELAY after it was sent), for C{seconds}: the times of the
    verdicts.
    """
    verdicts = []
    events = [(0.0, n) for n in range(guessers)]
    while events:
        sent, n = heapq.heappop(events)
        slot = penalty.reserve(GUESSER, sent)
        checked = slot + CHECK
        penalty.failed(GUESSER, checked)
        answered = max(checked, sent + REPLY_DELAY)
        if answered > seconds:
            continue
        verdicts.append(answered)
        heapq.heappush(events, (answered, n))
    return verdicts


def test_parallelGuessersGetFewVerdicts(penalty: AuthPenalty) -> None:
    """
    Ten connections guessing from one address get at most ten verdicts in
    30 s, and fewer in each later 30 s.
    """
    verdicts = guessInParallel(penalty, 10, 120.0)
    assert len([t for t in verdicts if t <= 30.0]) <= 10
    for start in (30.0, 60.0, 90.0):
        assert len([t for t in verdicts if start < t <= start + 30.0]) <= 3


def test_sequentialGuessesSlowDown(penalty: AuthPenalty) -> None:
    """
    One client guessing again at each answer waits longer each time, up to
    the cap.
    """
    now = 0.0
    waits = []
    for _ in range(8):
        slot = penalty.reserve(GUESSER, now)
        waits.append(slot - now)
        now = max(slot + CHECK, now + REPLY_DELAY)
        penalty.failed(GUESSER, now)
    assert waits[:2] == [0.0, 0.0]
    assert all(later >= earlier for earlier, later in zip(waits[2:], waits[3:]))
    assert waits[-1] == pytest.approx(15.0 - CHECK)


def test_otherAddressesAreNotDelayed(penalty: AuthPenalty) -> None:
    """A guessing address delays nobody else."""
    guessInParallel(penalty, 10, 30.0)
    assert penalty.reserve(OWNER, 30.0) == 30.0
    assert penalty.reserve("2001:db8::1", 30.0) == 30.0


def test_successAndQuietForget(penalty: AuthPenalty) -> None:
    """
    A success forgets the address's failures (its owner typed the right
    password); so does a quiet period.
    """
    for now in (0.0, 1.0, 2.0, 3.0, 4.0):
        penalty.reserve(GUESSER, now)
        penalty.failed(GUESSER, now)
    assert penalty.reserve(GUESSER, 5.0) > 5.0
    penalty.succeeded(GUESSER, 5.0)
    assert penalty.reserve(GUESSER, 6.0) == 6.0
    penalty.abandoned(GUESSER, 6.0)
    for now in (10.0, 11.0, 12.0, 13.0, 14.0):
        penalty.reserve(GUESSER, now)
        penalty.failed(GUESSER, now)
    quiet = 14.0 + penalty.forgetAfter + 1
    assert penalty.reserve(GUESSER, quiet) == quiet


def test_parallelLoginsOfOneAddressAreFreeUpToALimit(penalty: AuthPenalty) -> None:
    """
    An office behind one address logs in several users at once without
    waiting; only logins in flight beyond the free ones are spaced.
    """
    slots = [penalty.reserve(OWNER, 0.0) for _ in range(penalty.free)]
    assert slots == [0.0] * penalty.free
    assert penalty.reserve(OWNER, 0.0) == 1.0
    for _ in range(penalty.free + 1):
        penalty.succeeded(OWNER, 0.5)
    assert penalty.reserve(OWNER, 2.0) == 2.0
