"""
Tests of C{--workers N} (L{popsrv.app.workers} and L{popsrv.app.worker}): real twistd parents with real
worker processes, driven over TCP on 127.0.0.1 by poplib.
"""

from __future__ import annotations

import os
import poplib
import re
import signal
import ssl
import time
from pathlib import Path
from typing import Dict

import pytest

from popsrv.store.maildir import deliver
from tests.support.certificates import makePKI
from tests.support.servers import Launcher, Popsrv

HOST = "127.0.0.1"
DEADLINE = 20.0
WORKER_STARTED = r"worker (\d+) started \(pid (\d+)\b"


def workerPids(server: Popsrv, count: int, since: int = 0) -> Dict[int, int]:
    """
    Wait until C{count} workers have started (after output position
    C{since}); return the newest pid of each, by index.
    """

    def check():
        pids = {}
        for line in server.twistd.lines[since:]:
            match = re.search(WORKER_STARTED, line)
            if match:
                pids[int(match.group(1))] = int(match.group(2))
        return pids if len(pids) >= count else None

    return server.twistd._waitUntil(check, f"{count} workers started", DEADLINE)


def alive(pid: int) -> bool:
    """
    Whether a process runs (a zombie, ended but not yet reaped, does not).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def waitUntil(condition, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s")
        time.sleep(0.02)


def login(server: Popsrv, user: str = "alice") -> poplib.POP3:
    client = poplib.POP3(HOST, server.port, timeout=DEADLINE)
    client.user(user)
    client.pass_(server.users[user])
    return client


def servedStat(server: Popsrv) -> tuple:
    client = login(server)
    try:
        return client.stat()
    finally:
        client.quit()


@pytest.fixture
def pool(launcher: Launcher) -> Popsrv:
    """
    popsrv with two workers (sessions have a second to finish when it
    stops), and a message for alice.
    """
    server = launcher.popsrv("--workers", "2", "--shutdown-grace", "1")
    deliver(server.maildir("alice"), b"Subject: hi\n\nhello\n")
    workerPids(server, 2)
    return server


def test_eachWorkerServesTheSharedSocket(pool: Popsrv) -> None:
    """
    Both workers accept on the socket the parent bound: with either one
    stopped, the other serves every new session.
    """
    pids = workerPids(pool, 2)
    for stopped, serving in ((0, 1), (1, 0)):
        os.kill(pids[stopped], signal.SIGSTOP)
        try:
            mark = pool.twistd.mark()
            assert servedStat(pool) == (1, 22)
            pool.twistd.waitFor(rf"worker {serving}\] alice logged in", since=mark)
        finally:
            os.kill(pids[stopped], signal.SIGCONT)


def test_theMaildropLockHoldsAcrossWorkers(pool: Popsrv) -> None:
    """
    A maildrop locked by a session in one worker is [IN-USE] for a session
    in the other.
    """
    pids = workerPids(pool, 2)
    mark = pool.twistd.mark()
    first = login(pool)
    holder = int(pool.twistd.waitFor(r"worker (\d+)\] alice logged in", since=mark).group(1))
    os.kill(pids[holder], signal.SIGSTOP)
    try:
        second = poplib.POP3(HOST, pool.port, timeout=DEADLINE)
        second.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_(pool.users["alice"])
        second.close()
    finally:
        os.kill(pids[holder], signal.SIGCONT)
    first.quit()
    assert servedStat(pool) == (1, 22)


def test_aWorkerThatDiesIsStartedAgain(pool: Popsrv) -> None:
    """
    A worker killed by a signal is replaced by a new process, and serving
    goes on throughout.
    """
    pids = workerPids(pool, 2)
    mark = pool.twistd.mark()
    os.kill(pids[0], signal.SIGKILL)
    pool.twistd.waitFor(r"worker 0 ended .*starting it again", since=mark)
    restarted = workerPids(pool, 1, since=mark)
    assert restarted[0] != pids[0]
    assert alive(restarted[0]) and alive(pids[1])
    for _ in range(4):
        assert servedStat(pool) == (1, 22)


def test_stoppingTheParentStopsEveryWorker(pool: Popsrv) -> None:
    """
    SIGTERM to the parent ends every worker, then the parent, cleanly.
    """
    pids = workerPids(pool, 2)
    client = login(pool)
    status = pool.twistd.stop()
    # twistd ends by the signal that stopped it, after a clean shutdown.
    assert status == -signal.SIGTERM
    assert "Server Shut Down." in pool.twistd.output
    waitUntil(lambda: not any(alive(pid) for pid in pids.values()), "every worker gone")
    client.close()
    with pytest.raises(OSError):
        poplib.POP3(HOST, pool.port, timeout=DEADLINE)


def test_hangupReachesTheWorkers(launcher: Launcher, tmp_path: Path) -> None:
    """
    SIGHUP to the parent makes every worker reload its TLS certificate
    (served over implicit TLS by the workers), and none of them dies.
    """
    first = makePKI(tmp_path / "first")
    second = makePKI(tmp_path / "second")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(first.chain.read_bytes())
    key.write_bytes(first.key.read_bytes())
    server = launcher.popsrv("--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key))
    pids = workerPids(server, 2)
    mark = server.twistd.mark()

    def fingerprintOfSTLS(ca) -> bytes:
        client = poplib.POP3(HOST, server.port, timeout=DEADLINE)
        try:
            client.stls(ssl.create_default_context(cafile=str(ca)))
            return client.sock.getpeercert(binary_form=True)
        finally:
            client.quit()

    assert fingerprintOfSTLS(first.ca)
    cert.write_bytes(second.chain.read_bytes())
    key.write_bytes(second.key.read_bytes())
    os.kill(server.twistd.process.pid, signal.SIGHUP)
    for index in range(2):
        server.twistd.waitFor(rf"worker {index}\] reloaded the TLS certificate", since=mark)
    # Whichever worker answers, it now shows the new certificate.
    for _ in range(4):
        assert fingerprintOfSTLS(second.ca)
    assert all(alive(pid) for pid in pids.values())


def test_implicitTLSListenersAreServedByTheWorkers(launcher: Launcher, tmp_path: Path) -> None:
    """
    An C{ssl:} listener bound by the parent is served over TLS by the
    workers.
    """
    pki = makePKI(tmp_path / "pki")
    listen = f"ssl:0:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.chain}"
    server = launcher.popsrv("--workers", "2", "--listen", listen)
    ports = server.twistd.waitListeningPorts(2)
    deliver(server.maildir("alice"), b"Subject: hi\n\nhello\n")
    client = poplib.POP3_SSL(HOST, ports[1], context=ssl.create_default_context(cafile=str(pki.ca)))
    client.user("alice")
    client.pass_(server.users["alice"])
    assert client.stat() == (1, 22)
    client.quit()


def test_workersMustBeAPositiveNumber(launcher: Launcher, tmp_path: Path) -> None:
    """
    --workers 0 is refused with a clear message.
    """
    result = launcher.run(["-n", "popsrv", "--auth", "memory:a:b", "--workers", "0"], tmp_path)
    assert result.returncode != 0
    assert b"--workers must be between 1 and 256" in result.stdout


def test_spawnWorkersNeedsWorkers(launcher: Launcher, tmp_path: Path) -> None:
    """
    --spawn-workers without --workers would change nothing: it is refused
    with a clear message, not ignored.
    """
    result = launcher.run(["-n", "popsrv", "--auth", "memory:a:b", "--spawn-workers"], tmp_path)
    assert result.returncode != 0
    assert b"--spawn-workers is for --workers 2 or more" in result.stdout


def test_workersStopWhenTheParentIsKilled(pool: Popsrv) -> None:
    """
    Workers whose parent was killed outright (no chance to stop them) stop
    by themselves, and free the listening socket.
    """
    pids = workerPids(pool, 2)
    os.kill(pool.twistd.process.pid, signal.SIGKILL)
    pool.twistd.process.wait(DEADLINE)
    waitUntil(lambda: not any(alive(pid) for pid in pids.values()), "every worker gone")
    with pytest.raises(OSError):
        poplib.POP3(HOST, pool.port, timeout=DEADLINE)


def scramSalt(server: Popsrv, user: str) -> str:
    """
    The salt the server offers C{user} in an AUTH SCRAM-SHA-256 exchange.
    """
    import base64

    import scramp

    client = poplib.POP3(HOST, server.port, timeout=DEADLINE)
    try:
        first = scramp.ScramClient(["SCRAM-SHA-256"], user, "any").get_client_first()
        reply = client._shortcmd("AUTH SCRAM-SHA-256 " + base64.b64encode(first.encode()).decode())
        serverFirst = base64.b64decode(reply[2:]).decode()
        return dict(part.split("=", 1) for part in serverFirst.split(","))["s"]
    finally:
        client.sock.close()


def test_everyWorkerGivesAnUnknownUserTheSameSalt(launcher: Launcher, tmp_path: Path) -> None:
    """
    The placeholder SCRAM salt of a user without stored keys is the same in
    every worker (different ones would tell unknown users from users with
    stored keys, whose salt never changes).
    """
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:{PLAIN}secret\n")
    server = launcher.popsrv("--workers", "2", auth=f"passwd-file:{passwd}", users={"alice": "secret"})
    pids = workerPids(server, 2)
    salts = {}
    for stopped, serving in ((0, 1), (1, 0)):
        os.kill(pids[stopped], signal.SIGSTOP)
        try:
            salts[serving] = scramSalt(server, "nobody-here")
        finally:
            os.kill(pids[stopped], signal.SIGCONT)
    assert salts[0] == salts[1]


@pytest.mark.parametrize("listen", ["unix:popsrv.sock", "haproxy:unix:popsrv.sock"])
def test_workersRefuseListenersTheyCannotShare(launcher: Launcher, tmp_path: Path, listen: str) -> None:
    """
    UNIX listeners (and systemd's, which the parse of --listen checks
    first) cannot be shared by worker processes: a clear usage error says
    which can.
    """
    result = launcher.run(["-n", "popsrv", "--auth", "memory:a:b", "--workers", "2", "--listen", listen], tmp_path)
    assert result.returncode != 0
    assert b"--workers serves tcp:, tcp6: and ssl: listeners" in result.stdout


def test_aWorkerThatCannotStartStopsThePool() -> None:
    """
    A worker that ends with the status of unusable options (say, a key file
    it cannot read after twistd dropped privileges) is not started again:
    the parent stops, with a critical log line.
    """
    from twisted.internet.error import ProcessTerminated
    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs
    from twisted.python.failure import Failure

    from popsrv.app.workers import USAGE_ERROR, WorkerPool, _WorkerProcess

    class Reactor(Clock):
        running = True
        stopped = False

        def stop(self):
            self.stopped = True

    reactor = Reactor()
    pool = WorkerPool(reactor, [], [], 1)
    pool.running = True
    worker = _WorkerProcess(pool, 0)
    pool._workers[0] = worker
    pool._started[0] = reactor.seconds()
    with capturedLogs() as events:
        pool._ended(worker, Failure(ProcessTerminated(exitCode=USAGE_ERROR)))
    assert reactor.stopped
    assert reactor.getDelayedCalls() == []
    assert [e["event"] for e in events if e.get("event", "").startswith("worker")] == ["worker-unusable"]
