"""
Runners: how blocking work (file systems, password hashing, databases) is
done without blocking the reactor.  A runner takes a function and its
arguments and returns its result, or a C{Deferred} of it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

__all__ = ["inline", "threadRunner"]


def inline(function: Callable[..., Any], *args: Any) -> Any:
    """
    Run blocking work right away, in the calling thread.
    """
    return function(*args)


def threadRunner(reactor: IReactorThreads) -> Callable[..., Deferred[Any]]:
    """
    Return a runner that does blocking work in C{reactor}'s thread pool and
    returns a C{Deferred} of its result.
    """

    def run(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return run
