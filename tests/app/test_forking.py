"""
Tests of L{popsrv.app.forking}: workers forked from a real twistd parent
(what they hold, how they end, how they are started again), the parent's
handle on each, and the fallback to new processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import List, Optional

import pytest
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from popsrv.app import forking
from popsrv.app.forking import ForkedTransport
from tests.app.test_workers import DEADLINE, login, servedStat, waitUntil, workerPids
from tests.support.servers import Launcher, Popsrv

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="forking workers needs /proc/self/fd")


def parentOf(pid: int) -> int:
    """
    The process id of C{pid}'s parent.
    """
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"^PPid:\s+(\d+)", f.read(), re.M)
    assert match is not None
    return int(match.group(1))


def descriptorTargets(pid: int) -> List[str]:
    """
    What each open descriptor of C{pid} refers to.
    """
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except FileNotFoundError:
            pass
    return targets


def commandLine(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


@pytest.fixture
def forked(launcher: Launcher) -> Popsrv:
    """
    popsrv with two forked workers, and a message for alice.
    """
    from popsrv.store.maildir import deliver

    server = launcher.popsrv("--workers", "2", "--shutdown-grace", "1")
    deliver(server.maildir("alice"), b"Subject: hi\n\nhello\n")
    workerPids(server, 2)
    return server


def test_workersAreForkedFromTheParent(forked: Popsrv) -> None:
    """
    The workers are children of twistd running its code (not new
    interpreters), and serve the listening socket.
    """
    pids = workerPids(forked, 2)
    for pid in pids.values():
        assert parentOf(pid) == forked.twistd.process.pid
        assert b"popsrv.app.worker" not in commandLine(pid)
    assert len(re.findall(r"worker \d started \(pid \d+, forked\)", forked.twistd.output)) == 2
    for _ in range(4):
        assert servedStat(forked) == (1, 22)


def test_forkedWorkersHoldNothingOfTheParents(forked: Popsrv) -> None:
    """
    A forked worker does not hold the parent's standard output (twistd's
    log here): what it inherited but the listening socket and the
    scoreboard points at /dev/null; its standard input and output are its
    events socket.
    """
    pids = workerPids(forked, 2)
    parentOutput = os.readlink(f"/proc/{forked.twistd.process.pid}/fd/1")
    assert parentOutput.startswith("pipe:")
    for pid in pids.values():
        targets = descriptorTargets(pid)
        assert parentOutput not in targets
        assert os.devnull in targets
        assert os.readlink(f"/proc/{pid}/fd/0") == os.readlink(f"/proc/{pid}/fd/1")
        assert os.readlink(f"/proc/{pid}/fd/1").startswith("socket:")
        assert os.readlink(f"/proc/{pid}/fd/2").startswith("socket:")


def test_aKilledWorkerIsReapedAndForkedAgain(forked: Popsrv) -> None:
    pids = workerPids(forked, 2)
    mark = forked.twistd.mark()
    os.kill(pids[0], signal.SIGKILL)
    forked.twistd.waitFor(r"worker 0 ended \(.*signal 9", DEADLINE, since=mark)
    again = workerPids(forked, 1, since=mark)
    assert again[0] != pids[0]
    assert parentOf(again[0]) == forked.twistd.process.pid
    waitUntil(lambda: not os.path.exists(f"/proc/{pids[0]}"), "the killed worker reaped")
    assert f"(pid {again[0]}, forked)" in forked.twistd.output
    for _ in range(4):
        assert servedStat(forked) == (1, 22)


FORK_SCRIPT = """
import json, sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from twisted.internet.protocol import ProcessProtocol
from popsrv.app.forking import available, forkWorker

class Recording(ProcessProtocol):
    received = {1: b"", 2: b""}
    def childDataReceived(self, fd, data):
        self.received[fd] += data
    def processEnded(self, reason):
        self.reason = reason.value
        reactor.stop()

assert available(reactor) is None, available(reactor)
protocol = Recording()
transport = forkWorker(reactor, protocol, sys.argv[1:], {}, [])
reactor.callLater(30, reactor.stop)
reactor.run()
print(json.dumps({
    "pid": transport.pid, "exitCode": protocol.reason.exitCode, "signal": protocol.reason.signal,
    "stderr": protocol.received[2].decode("utf-8", "replace"),
}))
"""


@pytest.mark.parametrize("argument", ["--no-such-option", "--index=\udcff\u202e"])
def test_aForkedWorkersStandardErrorAndExitStatusReachTheParent(tmp_path: Path, argument: str) -> None:
    """
    What a forked worker writes on its standard error reaches its
    protocol (which the pool logs as errors), and its exit status the
    end: here a worker given arguments it refuses (as one given unusable
    options), which ends with status 2, the status that stops the pool.
    (In a process of its own: forking needs a process without threads.)
    """
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, argument], capture_output=True, timeout=DEADLINE, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode == 0, result.stderr.decode()
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["pid"] is None  # reaped
    assert outcome["exitCode"] == 2 and outcome["signal"] is None
    assert "usage: python -m popsrv.app.worker" in outcome["stderr"]


def test_stoppingEndsForkedWorkersCleanly(forked: Popsrv) -> None:
    pids = workerPids(forked, 2)
    client = login(forked)
    forked.twistd.stop()
    for pid in pids.values():
        assert not os.path.exists(f"/proc/{pid}")
    assert "Traceback" not in forked.twistd.output
    assert "worker-exit" not in forked.twistd.output
    client.sock.close()


def test_spawnWorkersStartsNewProcesses(launcher: Launcher) -> None:
    """
    With --spawn-workers, each worker is a new interpreter (python -m
    popsrv.app.worker), as for a checker that does not survive a fork.
    """
    server = launcher.popsrv("--workers", "2", "--spawn-workers")
    pids = workerPids(server, 2)
    for pid in pids.values():
        assert b"popsrv.app.worker" in commandLine(pid)
    assert "a new process: forking is off" in server.twistd.output
    login(server).quit()


class RecordingProtocol(ProcessProtocol):
    """
    Records what a L{ForkedTransport} tells its protocol.
    """

    def __init__(self) -> None:
        self.received: list[tuple[int, bytes]] = []
        self.ended: Optional[Failure] = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.received.append((childFD, data))

    def processEnded(self, reason: Failure) -> None:
        assert self.ended is None
        self.ended = reason


@pytest.mark.parametrize(
    "status, kind, exitCode, signalNumber",
    [
        (0, ProcessDone, 0, None),
        (2 << 8, ProcessTerminated, 2, None),
        (int(signal.SIGKILL), ProcessTerminated, None, signal.SIGKILL),
        (-1, ProcessTerminated, None, None),
    ],
)
def test_theEndComesAfterTheOutputAndTheStatus(
    status: int, kind: type, exitCode: Optional[int], signalNumber: Optional[int]
) -> None:
    """
    A worker ends for its protocol once both its sockets are closed and it
    is reaped, in whichever order; the status becomes what Twisted's own
    processes give (the pool stops on exit status 2).
    """
    for order in ([1, 2, "status"], ["status", 2, 1], [2, "status", 1]):
        protocol = RecordingProtocol()
        transport = ForkedTransport(protocol, 2**22 + 1)
        transport._received(1, b'{"event": "x"}\n')
        for step in order:
            assert protocol.ended is None
            if step == "status":
                transport.pid = None  # (Not registered with Twisted's reaper here.)
                transport.processEnded(status)
            else:
                transport._closed(step)  # type: ignore[arg-type]
        assert protocol.ended is not None
        assert isinstance(protocol.ended.value, kind)
        assert protocol.ended.value.exitCode == exitCode
        assert protocol.ended.value.signal == signalNumber
        assert protocol.received == [(1, b'{"event": "x"}\n')]
        with pytest.raises(ProcessExitedAlready):
            transport.signalProcess("TERM")


def test_notAvailableWithOtherThreads() -> None:
    """
    Forking a process with other threads could copy a lock one of them
    holds: workers then start as new processes.
    """
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert forking.available(reactorOf("twisted.internet.epollreactor")) == "this process runs other threads"
    finally:
        stop.set()
        thread.join()


def reactorOf(module: str) -> object:
    """
    An object that passes for a reactor of C{module}.
    """
    return type("SomeReactor", (), {"__module__": module})()


def test_notAvailableWithAnAsyncioReactor() -> None:
    """
    The asyncio reactor keeps its state in an event loop a forked worker
    would inherit, not only in descriptors: workers start as new
    processes.
    """
    assert forking.available(reactorOf("twisted.internet.asyncioreactor")) == (
        "a forked worker cannot start a new SomeReactor"
    )
    # (This process may run threads of earlier tests: that is not the reason.)
    assert "cannot start" not in (forking.available(reactorOf("twisted.internet.pollreactor")) or "")


def test_everyWorkerModuleImports() -> None:
    """
    The modules the parent imports for its workers exist (a name that no
    longer does would only cost memory, silently).
    """
    import importlib

    for name in forking.WORKER_MODULES:
        importlib.import_module(name)
    assert sys.modules["popsrv.app.worker"].runForked


def caughtSignals(pid: int) -> set[int]:
    """
    The signals C{pid} has handlers for (its SigCgt mask).
    """
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"^SigCgt:\s+([0-9a-f]+)", f.read(), re.M)
    assert match is not None
    mask = int(match.group(1), 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def test_aForkedWorkerHasOnlyItsOwnSignalHandlers(forked: Popsrv) -> None:
    """
    The parent's handlers stay with it (twistd with a log file rotates
    it on SIGUSR1: a worker must not); a worker handles what a new one
    would: its reactor's signals, and SIGHUP to reload its certificate.
    """
    pids = workerPids(forked, 2)
    waitUntil(lambda: forked.twistd.output.count("worker ready") == 2, "both workers ready")
    for pid in pids.values():
        # (Signals 32 and up are the C library's own, for its threads.)
        caught = {number for number in caughtSignals(pid) if number < 32}
        assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= caught <= {
            signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD
        }


def test_aForkedWorkerStopsGracefullyOnSIGINT(forked: Popsrv) -> None:
    """
    Ctrl-C in a terminal reaches every process of the group: a worker
    stops as its reactor does on SIGINT (its sessions get their grace),
    rather than dying of the signal.
    """
    pids = workerPids(forked, 2)
    waitUntil(lambda: forked.twistd.output.count("worker ready") == 2, "both workers ready")
    mark = forked.twistd.mark()
    os.kill(pids[0], signal.SIGINT)
    line = forked.twistd.waitFor(r"worker 0 ended \((.*)\)", DEADLINE, since=mark)
    assert "signal" not in line.group(1)
    workerPids(forked, 1, since=mark)
