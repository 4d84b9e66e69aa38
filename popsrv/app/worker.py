"""
One worker process of C{--workers N}, forked by L{popsrv.app.workers.WorkerPool}
(L{runForked}) or started as C{python -m popsrv.app.worker} (L{main}), with
the sockets its parent bound, which it adopts, and the parent's own options;
it sends its log events to its parent (L{popsrv.app.workerlog}).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from typing import Any, Optional, Sequence

from twisted.internet.interfaces import IListeningPort, IReactorSSL, IReactorTCP, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from zope.interface import implementer

from popsrv.app.listening import serverEndpoint
from popsrv.app.options import Options
from popsrv.app.service import makeService
from popsrv.app.workerlog import BatchingLineObserver
from popsrv.app.workers import USAGE_ERROR
from popsrv.scoreboard import Scoreboard

__all__ = ["adoptingEndpoint", "main"]

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6}

log = Logger()


@implementer(IReactorTCP, IReactorSSL)
class _AdoptingReactor:
    """
    A reactor for building one endpoint in a worker: where the endpoint
    would bind a socket, it adopts the one the parent bound instead (TCP,
    and TLS over TCP: the listeners workers may share, see
    L{popsrv.app.options.WORKER_LISTENERS}).
    """

    def __init__(self, reactor: Any, fileno: int, family: int) -> None:
        self._reactor = reactor
        self._fileno = fileno
        self._family = family

    def _adopt(self, factory: Any) -> IListeningPort:
        port = self._reactor.adoptStreamPort(self._fileno, self._family, factory)
        # The port works on a duplicate; the inherited descriptor is spare.
        os.close(self._fileno)
        return port  # type: ignore[no-any-return]

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> IListeningPort:
        return self._adopt(factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        return self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))

    def connectTCP(self, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.connectTCP(*args, **kwargs)

    def connectSSL(self, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.connectSSL(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def adoptingEndpoint(reactor: Any, description: str, fileno: int, family: int) -> IStreamServerEndpoint:
    """
    Return the endpoint of a C{--listen} description that, instead of
    binding, adopts the listening socket C{fileno} inherited from the
    parent (for C{ssl:} endpoints, with their TLS settings; behind
    C{haproxy:}, reading PROXY headers as in one process: see
    L{serverEndpoint}).
    """
    return serverEndpoint(_AdoptingReactor(reactor, fileno, family), description)


def _parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m popsrv.app.worker", description="A popsrv worker process.")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--adopt", action="append", default=[], help="FD:FAMILY of an inherited listening socket")
    parser.add_argument("--scoreboard", type=int, default=None, help="FD of the inherited scoreboard")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="-- then the popsrv options")
    arguments = parser.parse_args(argv)
    if arguments.options[:1] == ["--"]:
        arguments.options = arguments.options[1:]
    return arguments


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    Run one worker: the entry point of C{python -m popsrv.app.worker}.
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    # Every event, whatever its level: the parent filters what its own log
    # shows, and its --metrics count what the events tell.
    observer = BatchingLineObserver(reactor, sys.stdout.fileno())
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    _run(reactor, sys.argv[1:] if argv is None else argv, observer)


def runForked(argv: Sequence[str]) -> None:
    """
    Run one worker forked from its parent (L{popsrv.app.forking}), which
    gave it a new reactor, no log observers, and its sockets to the parent
    as standard input, output and error.
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogPublisher

    observer = BatchingLineObserver(reactor, 1)
    globalLogPublisher.addObserver(observer)
    _run(reactor, argv, observer)


def _run(reactor: Any, argv: Sequence[str], observer: BatchingLineObserver) -> None:
    """
    Parse a worker's arguments, and serve until the reactor stops.
    """
    try:
        arguments = _parseArguments(argv)
        # A SIGHUP that comes before the TLS reloader is installed must not
        # end the worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        options = Options()
        options.worker = True
        try:
            options.parseOptions(arguments.options)
        except usage.UsageError as error:
            sys.stderr.write(f"popsrv worker: {error}\n")
            sys.exit(USAGE_ERROR)
        adopted = []
        for item in arguments.adopt:
            fd, _, family = item.partition(":")
            adopted.append((int(fd), _FAMILIES[family]))
        if len(adopted) != len(options["listen"]):
            sys.stderr.write("popsrv worker: one inherited socket per --listen is needed\n")
            sys.exit(USAGE_ERROR)
        _serve(reactor, arguments, options, iter(adopted), observer)
    finally:
        observer.flush()


def _serve(
    reactor: Any, arguments: argparse.Namespace, options: Options, inherited: Any, observer: BatchingLineObserver
) -> None:
    """
    Start the service on the inherited sockets and run the reactor.
    """
    try:
        scoreboard = None
        if arguments.scoreboard is not None:
            scoreboard = Scoreboard.attach(arguments.scoreboard, arguments.index)
        service = makeService(
            options, reactor, endpointFor=lambda description: adoptingEndpoint(reactor, description, *next(inherited)),
            scoreboard=scoreboard,
        )
        service.privilegedStartService()
        service.startService()
    except Exception as error:
        sys.stderr.write(f"popsrv worker: {error}\n")
        sys.exit(USAGE_ERROR)
    # Its SIGHUP handler is in place: the parent may pass SIGHUP on now.
    log.info("worker ready", event="worker-ready")
    observer.flush()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    threading.Thread(target=_stopWhenOrphaned, args=(reactor,), name="parent-watch", daemon=True).start()
    reactor.run()


def _stopWhenOrphaned(reactor: Any) -> None:
    """
    Wait for the end of standard input, which comes when the parent is
    gone, and stop the worker then.  (A forked worker's standard input is
    a socket, whose reads fail with ECONNRESET instead when the parent
    died with data unread.)
    """
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    log.info("the parent process is gone: stopping", event="orphaned")
    reactor.callFromThread(_stop, reactor)


def _stop(reactor: Any) -> None:
    if reactor.running:
        reactor.stop()


if __name__ == "__main__":
    main()
