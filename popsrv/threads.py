"""
Runners: how blocking work (file systems, password hashing, databases) is
done without blocking the reactor.  A runner takes a function and its
arguments and returns its result, or a C{Deferred} of it.
"""

from __future__ import annotations

from typing import Callable, Protocol, TypeVar, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

__all__ = ["Runner", "ThreadRunner", "inline", "threadRunner"]

_T = TypeVar("_T")


class Runner(Protocol):
    """
    The type of a runner: called with a function and its positional
    arguments, it calls the function somewhere (in this thread, in a thread
    pool) and returns its result or a C{Deferred} of it.  L{inline} and
    what L{threadRunner} returns are runners; so is any function of the
    same shape.
    """

    def __call__(self, function: Callable[..., _T], *args: object) -> Union[_T, Deferred[_T]]:
        """
        Run C{function(*args)}.

        @return: its result, or a C{Deferred} that fires with it.
        """


class ThreadRunner(Protocol):
    """
    The type of a L{Runner} that always answers with a C{Deferred}, as
    L{threadRunner}'s do.
    """

    def __call__(self, function: Callable[..., _T], *args: object) -> Deferred[_T]:
        """
        Run C{function(*args)} elsewhere.

        @return: a C{Deferred} that fires with its result.
        """


def inline(function: Callable[..., _T], *args: object) -> _T:
    """
    Run blocking work right away, in the calling thread.

    @param function: the work.
    @param args: its positional arguments.
    @return: what C{function} returns.
    """
    return function(*args)


def threadRunner(reactor: IReactorThreads) -> ThreadRunner:
    """
    Return a runner that does blocking work in C{reactor}'s thread pool.

    @param reactor: the reactor whose thread pool does the work, and whose
        thread the results are delivered in.
    @return: a L{ThreadRunner}: its C{Deferred}s fire, in the reactor
        thread, with the work's results.
    """

    def run(function: Callable[..., _T], *args: object) -> Deferred[_T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return run
