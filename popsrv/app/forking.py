"""
Workers forked from their parent, sharing what it imported: C{--workers N}
with Twisted and popsrv in memory once, copy-on-write, instead of once per
process.

A worker started as a fresh interpreter imports Twisted and popsrv again
and keeps its own copy of all of it (about 38 MB).  When the pool starts,
before the reactor runs, the parent imports what a worker runs
(L{WORKER_MODULES}) and freezes every object it has out of the garbage
collector's reach (L{prepare}): a collection in any process would write to
every page that holds one, and so copy them all.  Then it forks each
worker (L{forkWorker}):

  - The worker's log events and standard error reach the parent on two
    UNIX sockets, which the parent reads as it reads a spawned worker's
    pipes; standard input is the events socket too, whose end of file
    tells the worker that its parent is gone.
  - Every other descriptor the worker inherited but the listening sockets
    and the scoreboard (the parent's log file, its epoll, its sockets to
    the other workers) is pointed at C{/dev/null}: what it held is
    released, and its number stays taken, so that an object that still
    thinks it owns one can never close a descriptor opened later.
  - The worker gives itself a new reactor (the inherited one is closed
    without being run), leaves the parent's log observers and signal
    handlers behind, and runs L{popsrv.app.worker.runForked}.
  - The parent reaps it as Twisted reaps the processes it spawns, and its
    protocol hears of its end once its sockets are closed and its wait
    status is known.

A worker that ends is forked again in the same way, unless the parent runs
other threads by then (a fork copies only the forking thread, and a lock
another one held would stay held in the child): then, as on systems
without C{/proc/self/fd}, the pool starts a fresh interpreter
(L{available} says why).
"""

from __future__ import annotations

import errno
import gc
import importlib
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

__all__ = ["WORKER_MODULES", "ForkedTransport", "available", "forkWorker", "prepare"]

# What a worker imports to serve POP3 on Maildirs and mbox spools, with
# the authentication backends popsrv ships but PostgreSQL's (whose driver a
# worker imports only when configured).
WORKER_MODULES = (
    "popsrv.app.worker",
    "popsrv.app.service",
    "popsrv.app.workerlog",
    "popsrv.pop3.protocol",
    "popsrv.pop3.factory",
    "popsrv.pop3.transport",
    "popsrv.store.realm",
    "popsrv.store.maildir.maildrop",
    "popsrv.store.maildir.listing",
    "popsrv.store.maildir.directory",
    "popsrv.auth.checkers",
    "popsrv.auth.scram",
    "twisted.internet.epollreactor",
    "twisted.protocols.tls",
    "twisted.internet.ssl",
)
# The reactors a forked worker can start afresh (whose state is all in
# descriptors it closes, unlike asyncio's event loop).
_REACTORS = frozenset(
    {"twisted.internet.epollreactor", "twisted.internet.pollreactor", "twisted.internet.selectreactor"}
)
# The exit status of a worker that failed before it could say why.
_SOFTWARE_ERROR = 70


def available(reactor: Any) -> Optional[str]:
    """
    C{None} if this process, running C{reactor}, can fork a worker now,
    else why not.
    """
    if not hasattr(os, "fork") or not os.path.isdir("/proc/self/fd"):
        return "forking workers needs fork() and /proc/self/fd"
    if type(reactor).__module__ not in _REACTORS:
        return f"a forked worker cannot start a new {type(reactor).__name__}"
    if threading.active_count() != 1:
        return "this process runs other threads"
    return None


def prepare(modules: Sequence[str] = WORKER_MODULES) -> None:
    """
    Before the first fork: import C{modules} (those of them that exist),
    then collect garbage and freeze every object left, for good.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()


class ForkedTransport:
    """
    The parent's handle on one forked worker, as a process transport for a
    C{ProcessProtocol}: its sockets feed C{childDataReceived} (1 for log
    events, 2 for standard error), and C{processEnded} comes once both are
    closed and the worker is reaped.  It is also the worker's reap handler
    (C{twisted.internet.process.registerReapProcessHandler}).

    @ivar pid: its process id, until it is reaped.
    """

    def __init__(self, protocol: Any, pid: int) -> None:
        self.pid: Optional[int] = pid
        self._protocol = protocol
        self._open = {1, 2}
        self._status: Optional[int] = None
        self._told = False

    def signalProcess(self, signalID: Any) -> None:
        """
        Send the worker a signal (C{"TERM"}, C{"KILL"}, C{"HUP"} or a
        number).  Until it is reaped, its process id is its own.
        """
        if self.pid is None:
            raise ProcessExitedAlready()
        number = signalID if isinstance(signalID, int) else getattr(signal, f"SIG{signalID}")
        os.kill(self.pid, number)

    def reapProcess(self) -> None:
        """
        Reap the worker if it ended (called on SIGCHLD).
        """
        if self.pid is None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, -1
        if pid:
            self.processEnded(status)

    def processEnded(self, status: int) -> None:
        """
        The worker ended with wait status C{status} (-1: unknown).
        """
        from twisted.internet import process

        if self.pid is not None:
            registered: object = process.reapProcessHandlers.get(self.pid)
            if registered is self:
                process.unregisterReapProcessHandler(self.pid, self)
            self.pid = None
        self._status = status
        self._maybeTell()

    def _received(self, childFD: int, data: bytes) -> None:
        self._protocol.childDataReceived(childFD, data)

    def _closed(self, childFD: int) -> None:
        self._open.discard(childFD)
        self._maybeTell()

    def _maybeTell(self) -> None:
        if self._open or self._status is None or self._told:
            return
        self._told = True
        self._protocol.processEnded(_reason(self._status))


def _reason(status: int) -> Failure:
    """
    What Twisted's own processes give their protocol for a wait status.
    """
    if status >= 0 and os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == 0:
            return Failure(ProcessDone(status))
        return Failure(ProcessTerminated(exitCode=code, status=status))
    if status >= 0 and os.WIFSIGNALED(status):
        return Failure(ProcessTerminated(signal=os.WTERMSIG(status), status=status))
    return Failure(ProcessTerminated(status=None))


class _Output(Protocol):
    """
    The parent's end of one of a worker's sockets.
    """

    def __init__(self, transport: ForkedTransport, childFD: int) -> None:
        self._worker = transport
        self._childFD = childFD

    def dataReceived(self, data: bytes) -> None:
        self._worker._received(self._childFD, data)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._worker._closed(self._childFD)


class _OutputFactory(Factory):
    """
    Builds the L{_Output} of one of a worker's sockets.
    """

    noisy = False

    def __init__(self, transport: ForkedTransport, childFD: int) -> None:
        self._transport = transport
        self._childFD = childFD

    def buildProtocol(self, addr: object) -> _Output:
        return _Output(self._transport, self._childFD)


def forkWorker(
    reactor: Any, protocol: Any, arguments: Sequence[str], environment: Mapping[str, str], keep: Sequence[int]
) -> ForkedTransport:
    """
    Fork a worker that runs L{popsrv.app.worker.runForked} with
    C{arguments}, C{environment} added to this process's, and the
    descriptors C{keep} (by number); connect C{protocol} (a
    C{ProcessProtocol}) to it.  Call only when L{available} says it can.

    @raise OSError: if the fork fails (the parent goes on).
    """
    from twisted.internet import process

    events = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    errors = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for stream in (sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr):
        try:
            stream.flush()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a closed or odd stream: nothing to flush
            pass
    # Signals wait until the child has its own handlers: before, the
    # parent's (the old reactor's) would take them, and a SIGTERM would
    # be lost.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for pair in (events, errors):
            for end in pair:
                end.close()
        raise
    if pid == 0:
        _child(events[1].fileno(), errors[1].fileno(), keep, arguments, environment, mask)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    transport = ForkedTransport(protocol, pid)
    # Reaped from now on, however soon it ends.
    process.registerReapProcessHandler(pid, transport)
    try:
        events[1].close()
        errors[1].close()
        for childFD, ours in ((1, events[0]), (2, errors[0])):
            reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _OutputFactory(transport, childFD))
            ours.close()
    except BaseException:
        # (Out of descriptors, say.)  A worker the parent cannot hear is
        # stopped; it is reaped as any other.
        os.kill(pid, signal.SIGKILL)
        for pair in (events, errors):
            for end in pair:
                end.close()
        raise
    protocol.makeConnection(transport)
    return transport


# In the forked worker.


def _child(
    events: int,
    errors: int,
    keep: Sequence[int],
    arguments: Sequence[str],
    environment: Mapping[str, str],
    mask: Iterable[int],
) -> None:
    """
    The forked worker's life; it never returns.
    """
    status = _SOFTWARE_ERROR
    try:
        os.dup2(events, 0)
        os.dup2(events, 1)
        os.dup2(errors, 2)
        _neutralizeDescriptors({0, 1, 2, *keep})
        _ownSignals()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        from twisted.internet import process

        # The parent's processes are not this one's to reap.
        process.reapProcessHandlers.clear()
        os.environ.update(environment)
        _freshReactor()
        _freshLogging()
        from popsrv.app.worker import runForked

        runForked(arguments)
        status = 0
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            status = exit.code or 0
        else:
            sys.stderr.write(f"{exit.code}\n")
            status = 1
    except BaseException:  # noqa: BLE001 - on its standard error, which the parent logs
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _ownSignals() -> None:
    """
    Leave the parent's signal handlers behind (its reactor's, twistd's log
    rotation on SIGUSR1): every signal Python handles gets its default, as
    in a new interpreter, but SIGHUP, ignored until the worker's reload
    handler is in place.
    """
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(signum, signal.SIG_DFL)
    # As in a new interpreter: Twisted's reactor installs its own handler
    # only over this one.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _neutralizeDescriptors(keep: set[int]) -> None:
    """
    Point every descriptor not in C{keep} at C{/dev/null}: what it held
    (a file, a socket, an epoll) is released, and its number stays taken.
    """
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep or fd == null:
            continue
        try:
            os.dup2(null, fd, inheritable=False)
        except OSError as error:
            if error.errno != errno.EBADF:
                raise
    os.close(null)


def _freshReactor() -> None:
    """
    Replace the reactor inherited from the parent with a new one of the
    same kind.  The inherited one is closed without being run: its epoll
    and waker descriptors (pointed at /dev/null already) are closed
    through their owners.
    """
    import twisted.internet

    inherited = sys.modules.pop("twisted.internet.reactor", None)
    if hasattr(twisted.internet, "reactor"):
        del twisted.internet.reactor
    closers: List[Callable[[], Any]] = []
    poller = getattr(inherited, "_poller", None)
    if poller is not None and hasattr(poller, "close"):
        closers.append(poller.close)
    waker = getattr(inherited, "waker", None)
    if waker is not None and hasattr(waker, "connectionLost"):
        closers.append(lambda: waker.connectionLost(None))
    for close in closers:
        try:
            close()
        except Exception:  # noqa: BLE001 - already closed, or another Twisted
            pass
    module = type(inherited).__module__ if inherited is not None else "twisted.internet.epollreactor"
    install: Optional[Callable[[], Any]] = getattr(importlib.import_module(module), "install", None)
    if install is None:
        from twisted.internet import epollreactor

        install = epollreactor.install
    install()


def _freshLogging() -> None:
    """
    Leave the parent's log observers (its log file) behind, and standard
    output and error as they were before twistd redirected them to the log.
    """
    from twisted.logger import globalLogPublisher

    # LogPublisher has no public way to list its observers.
    for observer in list(getattr(globalLogPublisher, "_observers", [])):
        globalLogPublisher.removeObserver(observer)
    sys.stdout = sys.__stdout__
    sys.stderr = sys.__stderr__

