"""
Tests for L{popsrv.auth.queue}: concurrency, round robin between
addresses, dropping the checks of clients that left, and the caps.
"""

from __future__ import annotations

from typing import List

import pytest
from twisted.python.failure import Failure

from popsrv.auth.queue import ClientGone, LoginQueue
from popsrv.errors import CredentialsUnavailable


def test_concurrencyAndRoundRobin() -> None:
    """
    Checks beyond the concurrency wait; turns go address by address, so
    one address's flood does not hold up another's single login.
    """
    queue = LoginQueue(concurrency=1)
    order: List[str] = []
    assert queue.enter("192.0.2.1", lambda: False).called
    for n in range(5):
        queue.enter("192.0.2.1", lambda: False).addCallback(lambda _, n=n: order.append(f"flood{n}"))
    queue.enter("198.51.100.1", lambda: False).addCallback(lambda _: order.append("owner"))
    assert queue.stats() == {"running": 1, "waiting": 6}
    queue.leave()
    assert order == ["flood0"]
    queue.leave()
    assert order == ["flood0", "owner"]
    for _ in range(5):
        queue.leave()
    assert order == ["flood0", "owner", "flood1", "flood2", "flood3", "flood4"]
    assert queue.stats() == {"running": 0, "waiting": 0}


def test_clientsThatLeftAreDropped() -> None:
    """
    A waiting check whose client left is dropped at its turn (failing with
    ClientGone), and the next one runs instead.
    """
    queue = LoginQueue(concurrency=1)
    queue.enter("192.0.2.1", lambda: False)
    results: List[object] = []
    queue.enter("192.0.2.2", lambda: True).addBoth(results.append)
    queue.enter("192.0.2.3", lambda: False).addBoth(results.append)
    queue.leave()
    assert isinstance(results[0], Failure) and results[0].check(ClientGone)
    assert results[1] is None
    assert queue.stats() == {"running": 1, "waiting": 0}


@pytest.mark.parametrize(
    "hosts, refusedHost",
    [(["192.0.2.1"] * 3, "192.0.2.1"), (["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"], "192.0.2.5")],
)
def test_caps(hosts: List[str], refusedHost: str) -> None:
    """
    Beyond its per-address cap an address's checks are refused as
    unavailable; beyond the total cap everyone's are.
    """
    queue = LoginQueue(concurrency=1, maxWaiting=4, maxWaitingPerAddress=3)
    queue.enter("203.0.113.1", lambda: False)
    for host in hosts:
        assert not queue.enter(host, lambda: False).called
    refused: List[Failure] = []
    queue.enter(refusedHost, lambda: False).addErrback(refused.append)
    assert refused and refused[0].check(CredentialsUnavailable)
