"""
Several processes serving the same listening sockets: C{--workers N}.

The parent process binds every C{--listen} endpoint (in
C{privilegedStartService}, before twistd drops root), never accepts a
connection itself, and starts N workers.  A worker is forked from the
parent (L{popsrv.app.forking}; or, with C{--spawn-workers}, it is a new
C{python -m popsrv.app.worker} process); it inherits the listening sockets,
adopts them (C{IReactorSocket.adoptStreamPort}, wrapped in TLS for C{ssl:}
listeners) and runs popsrv with the parent's own options; the kernel hands
each new connection to one of the workers.

  - The maildrop lock is C{flock} on a file, which excludes every other
    open file, in the same process or another: a maildrop is still used
    by one session at a time across workers.
  - A worker that dies is started again: at once if it ran for a while,
    after a growing delay (up to a minute) while it keeps dying young; one
    that cannot use its options (exit status 2) stops the whole server.
  - When the parent stops (SIGTERM, SIGINT), it closes its listening
    sockets and stops its workers with SIGTERM (each gives its sessions the
    shutdown grace), and with SIGKILL those still running after
    C{stopGrace} seconds, before it exits itself.  A worker also stops
    when its parent is gone however it ended (even by SIGKILL): it holds
    the write end of a pipe whose other end is the worker's standard
    input, and the worker stops at its end of file.
  - SIGHUP is passed on to the workers (each reloads its TLS
    certificate).
  - Workers send their log events as JSON lines (L{popsrv.app.workerlog});
    the parent publishes them in its own log, with a C{worker} key, so the
    log stays one stream of structured events.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from types import FrameType
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
)
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from popsrv.app import forking
from popsrv.app.listening import describeAddress, serverEndpoint, splitTLS
from popsrv.app.workerlog import decodeEvent
from popsrv.scoreboard import Scoreboard

__all__ = ["STOP_GRACE", "USAGE_ERROR", "WorkerPool"]

STOP_GRACE = 10.0
# The exit status of a worker whose options are unusable.
USAGE_ERROR = 2
# A worker that dies within this many seconds of its start died young.
YOUNG = 5.0
RESTART_DELAY_MAX = 60.0

_FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6}

log = Logger()


class _NoConnections(Factory):
    """
    The factory of the parent's listening ports, which never accept.
    """

    noisy = False

    def buildProtocol(self, addr: object) -> None:
        return None


def _familyOf(port: IListeningPort) -> str:
    """
    The address family of a listening port, as the workers are told it.
    """
    return "INET6" if ":" in str(getattr(port.getHost(), "host", "")) else "INET"


class _WorkerProcess(ProcessProtocol):
    """
    The parent's end of one worker: relays its log, and tells the pool when
    it ends.
    """

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.ready = False
        self._pendingSignals: list[str] = []
        self._buffers = {1: b"", 2: b""}

    def signal(self, name: str) -> None:
        """
        Send the worker a signal; a SIGHUP only once it has started (until
        then, SIGHUP would end it), so it waits until then.
        """
        if name == "HUP" and not self.ready:
            self._pendingSignals.append(name)
            return
        try:
            assert self.transport is not None
            self.transport.signalProcess(name)
        except Exception:  # noqa: BLE001 - it ended meanwhile
            pass

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD not in self._buffers:
            return
        *lines, self._buffers[childFD] = (self._buffers[childFD] + data).split(b"\n")
        for line in lines:
            if childFD == 1:
                self._relayEvent(line)
            elif line.strip():
                log.error("worker {worker}: {line}", worker=self.index, line=line.decode("utf-8", "replace"))

    def _relayEvent(self, line: bytes) -> None:
        """
        Publish one of the worker's log events in the parent's log.
        """
        try:
            event = decodeEvent(line.decode("utf-8"))
        except ValueError:
            if line.strip():
                log.info("worker {worker}: {line}", worker=self.index, line=line.decode("utf-8", "replace"))
            return
        event["worker"] = self.index
        if event.get("event") == "worker-ready" and not self.ready:
            self.ready = True
            pending, self._pendingSignals = self._pendingSignals, []
            for name in pending:
                self.signal(name)
        level = getattr(event.get("log_level"), "name", "-")
        event["log_system"] = f"{event.get('log_namespace', '-')}#{level} worker {self.index}"
        globalLogPublisher(event)

    def processEnded(self, reason: Failure) -> None:
        self.pool._ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Binds the listening sockets, then runs C{count} worker processes that
    serve them, restarting any that dies, until the service stops.

    @ivar ports: the listening ports, once bound.
    @ivar environment: variables the workers get besides this process's
        own (such as the state directory this process chose, so that
        workers that run as another user share it).
    """

    def __init__(
        self,
        reactor: Any,
        descriptions: Sequence[str],
        arguments: Sequence[str],
        count: int,
        onListening: Optional[Callable[[IListeningPort], None]] = None,
        executable: str = sys.executable,
        scoreboard: Optional[Scoreboard] = None,
        stopGrace: float = STOP_GRACE,
        environment: Optional[Mapping[str, str]] = None,
        fork: bool = True,
    ) -> None:
        self.reactor = reactor
        self.environment = dict(environment or {})
        self.descriptions = list(descriptions)
        self.arguments = list(arguments)
        self.count = count
        self.ports: list[IListeningPort] = []
        self._onListening = onListening
        self._executable = executable
        self._scoreboard = scoreboard
        self._stopGrace = stopGrace
        self._workers: dict[int, _WorkerProcess] = {}
        self._started: dict[int, float] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._previousHangup: Union[Callable[[int, Optional[FrameType]], Any], int, None] = None
        self._fork = fork
        # Why workers cannot be forked (None: they can), as of the start.
        self._unforkable: Optional[str] = "the pool has not started"

    def privilegedStartService(self) -> None:
        """
        Bind every listening socket (as root, if twistd runs as root).
        """
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        """
        Bind (unless already bound) and start the workers.
        """
        super().startService()
        self._bind()
        self._unforkable = forking.available(self.reactor) if self._fork else "forking is off"
        if self._unforkable is None:
            # Before the reactor runs, while this process has one thread.
            forking.prepare()
        for index in range(self.count):
            self._spawn(index)
        self._previousHangup = signal.signal(signal.SIGHUP, self._hangup)

    def _bind(self) -> None:
        if self.ports:
            return
        for description in self.descriptions:
            # The parent binds the socket; a worker wraps it in TLS (tls:).
            endpoint = serverEndpoint(self.reactor, splitTLS(description)[0])
            results: List[Any] = []
            endpoint.listen(_NoConnections()).addBoth(results.append)
            if not results or isinstance(results[0], Failure):
                for port in self.ports:
                    port.stopListening()
                self.ports = []
                if results:
                    results[0].raiseException()
                raise RuntimeError(f"could not listen on {description}")
            port = results[0]
            # The workers accept; the parent only holds the socket open.
            port.stopReading()
            self.ports.append(port)
            log.info("popsrv listening on {address}", address=describeAddress(port.getHost()), event="listening")
            if self._onListening is not None:
                self._onListening(port)

    def _spawn(self, index: int) -> None:
        """
        Start worker C{index}, handing it the listening sockets.
        """
        self._restarts.pop(index, None)
        childFDs: dict[int, object] = {0: "w", 1: "r", 2: "r"}
        adopt = []
        for port in self.ports:
            fd = port.fileno()  # type: ignore[attr-defined]  # TCP ports have one; workers take tcp and ssl only
            childFDs[fd] = fd
            adopt += ["--adopt", f"{fd}:{_familyOf(port)}"]
        if self._scoreboard is not None:
            # A new worker starts with nothing counted in its column: what
            # the one before it counted closed with it.
            self._scoreboard.clearColumn(index)
            fd = self._scoreboard.fileno()
            childFDs[fd] = fd
            adopt += ["--scoreboard", str(fd)]
        worker = _WorkerProcess(self, index)
        arguments = ["--index", str(index), *adopt, "--", *self.arguments]
        from popsrv.auth.scram import placeholderKeyEnvironment

        environment = {**self.environment, **placeholderKeyEnvironment()}
        why = self._whyNotFork()
        if why is None:
            keep = [fd for fd in childFDs if fd > 2]
            try:
                forking.forkWorker(self.reactor, worker, arguments, environment, keep)
            except OSError as error:
                why = f"the fork failed ({error.strerror})"
        if why is not None:
            argv = [self._executable, "-m", "popsrv.app.worker", *arguments]
            env = {**os.environ, **environment}
            self.reactor.spawnProcess(worker, self._executable, argv, env=env, childFDs=childFDs)
        self._workers[index] = worker
        self._started[index] = self.reactor.seconds()
        pid = getattr(worker.transport, "pid", None)
        log.info(
            "worker {worker} started (pid {pid}, {how})", worker=index, pid=pid, event="worker-start",
            how="forked" if why is None else f"a new process: {why}",
        )

    def _whyNotFork(self) -> Optional[str]:
        """
        C{None} if a worker can be forked now (see L{popsrv.app.forking}),
        else why it starts as a new process.
        """
        return self._unforkable or forking.available(self.reactor)

    def _ended(self, worker: _WorkerProcess, reason: Failure) -> None:
        """
        A worker ended: start it again if the pool still runs.
        """
        index = worker.index
        if self._workers.get(index) is not worker:
            return
        del self._workers[index]
        if not self.running:
            return
        lived = self.reactor.seconds() - self._started[index]
        if getattr(reason.value, "exitCode", None) == USAGE_ERROR:
            # Its options do not work in a worker (a file it cannot read
            # after twistd dropped privileges, say): starting it again
            # cannot help.
            log.critical(
                "worker {worker} cannot start (see its message above): stopping popsrv",
                worker=index, event="worker-unusable",
            )
            if self.reactor.running:
                self.reactor.stop()
            return
        delay = self._delays.get(index, 0.0)
        delay = min(RESTART_DELAY_MAX, max(0.5, delay * 2)) if lived < YOUNG else 0.0
        self._delays[index] = delay
        log.error(
            "worker {worker} ended ({reason}); starting it again in {delay:.1f} s",
            worker=index, reason=reason.getErrorMessage(), delay=delay, event="worker-exit",
        )
        self._restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    def _hangup(self, signum: int, frame: Optional[FrameType]) -> None:
        self.reactor.callFromThread(self.signalWorkers, "HUP")

    def signalWorkers(self, name: str) -> None:
        """
        Send a signal (C{"HUP"}, C{"TERM"}, C{"KILL"}) to every live worker.
        """
        for worker in list(self._workers.values()):
            worker.signal(name)

    def stopService(self) -> defer.Deferred[Any]:
        """
        Close the listening sockets (the workers close their copies at once
        too, so nothing accepts any more), then stop the workers (SIGTERM,
        then SIGKILL after C{stopGrace} seconds).
        """
        super().stopService()
        if self._previousHangup is not None:
            signal.signal(signal.SIGHUP, self._previousHangup)
            self._previousHangup = None
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ports, self.ports = self.ports, []
        closing = [defer.maybeDeferred(port.stopListening) for port in ports]
        ending = [worker.ended for worker in self._workers.values()]
        self.signalWorkers("TERM")
        killer = self.reactor.callLater(self._stopGrace, self.signalWorkers, "KILL")

        def ended(_: object) -> None:
            if killer.active():
                killer.cancel()

        stopping: list[defer.Deferred[Any]] = [*closing, *ending]
        return defer.gatherResults(stopping).addCallback(ended)


