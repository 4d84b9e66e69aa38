"""
The real popsrv under twistd for the end-to-end tests,
as an operator would, on an ephemeral port of 127.0.0.1.

The server runs the working tree's code: its PYTHONPATH starts with the
repository root, so C{popsrv} (and the C{twisted/plugins} drop-in) come from
this checkout rather than from whatever copy is installed.
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.python.failure import Failure

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TWIST = os.path.join(os.path.dirname(sys.executable), "twist")
LISTEN_LOCAL = "tcp:0:interface=127.0.0.1"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
DEFAULT_USERS = {"alice": "secret", "bob": "hunter2"}
LISTENING = re.compile(r"popsrv listening on 127\.0\.0\.1:(\d+)\b")


def twistdEnvironment() -> Dict[str, str]:
    """
    The environment for a twistd child: ours, with the repository root first
    on PYTHONPATH.
    """
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def runTwistd(args: Sequence[str], cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """
    Run twistd to completion (for --help and failing starts); stderr is
    merged into stdout.
    """
    return subprocess.run(
        [TWISTD, *args],
        cwd=str(cwd),
        env=twistdEnvironment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
    )


def runTwist(args: Sequence[str], cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """
    Run C{twist ARGS} (Twisted's other runner) to completion, with its
    standard output and standard error kept apart.
    """
    return subprocess.run(
        [TWIST, *args],
        cwd=str(cwd),
        env=twistdEnvironment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


class TwistdProcess:
    """
    A running C{twistd -n ... popsrv ...} (or, given C{twistArgs}, C{twist
    TWISTARGS popsrv ...}) whose output is collected, line by line, by a
    daemon thread so that tests can wait for log lines.
    """

    def __init__(
        self,
        popsrvArgs: Sequence[str],
        cwd: Path,
        application: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None,
        twistdArgs: Sequence[str] = (),
        twistArgs: Optional[Sequence[str]] = None,
    ) -> None:
        run = ["-y", str(application)] if application is not None else ["popsrv", *popsrvArgs]
        if twistArgs is not None:
            # Twisted's other runner, which logs to standard output.
            self.args = [TWIST, *twistArgs, "popsrv", *popsrvArgs]
        else:
            self.args = [TWISTD, "-n", "--pidfile=", "--logfile=-", *twistdArgs, *run]
        self.cwd = cwd
        self._lines: List[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            self.args,
            cwd=str(cwd),
            env={**twistdEnvironment(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._collect, name=f"twistd-{self.process.pid}", daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def lines(self) -> List[str]:
        """
        A copy of the output lines collected so far.
        """
        with self._changed:
            return list(self._lines)

    @property
    def output(self) -> str:
        """
        The output collected so far, as one text.
        """
        return "\n".join(self.lines)

    def mark(self) -> int:
        """
        Return a position in the output, to wait only for lines after it.
        """
        with self._changed:
            return len(self._lines)

    def _waitUntil(self, check: Callable[[], object], describe: str, timeout: float):
        """
        Wait until C{check()} (called with the output lines locked, and
        again whenever a line arrives) returns something other than L{None},
        and return that.

        @raise AssertionError: if the deadline passes or twistd exits first;
            C{describe} says what was awaited.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = check()
                if found is not None:
                    return found
                if self._eof:
                    raise AssertionError(
                        f"twistd exited (status {self.process.wait(STOP_TIMEOUT)}) before {describe}; "
                        "its output:\n" + "\n".join(self._lines)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {describe} within {timeout}s; output so far:\n" + "\n".join(self._lines)
                    )
                self._changed.wait(left)

    def waitFor(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match:
        """
        Wait until an output line (from position C{since} on) matches the
        regular expression C{pattern}, and return the match.

        @raise AssertionError: if the deadline passes or twistd exits first.
        """
        regex = re.compile(pattern)
        checked = [since]

        def check():
            for line in self._lines[checked[0]:]:
                match = regex.search(line)
                if match:
                    return match
            checked[0] = max(checked[0], len(self._lines))
            return None

        return self._waitUntil(check, f"line matching {pattern!r}", timeout)

    def waitListening(self, timeout: float = START_TIMEOUT) -> int:
        """
        Wait for the "popsrv listening on 127.0.0.1:PORT" line; return PORT.
        """
        return int(self.waitFor(LISTENING.pattern, timeout).group(1))

    def waitListeningPorts(self, count: int, timeout: float = START_TIMEOUT) -> List[int]:
        """
        Wait for C{count} "popsrv listening on 127.0.0.1:PORT" lines (one per
        --listen option) and return their ports in the order they were
        logged, which is the order of the --listen options.

        @raise AssertionError: if the deadline passes or twistd exits first.
        """

        def check():
            ports = [int(match.group(1)) for match in map(LISTENING.search, self._lines) if match]
            return ports[:count] if len(ports) >= count else None

        return self._waitUntil(check, f"{count} listening lines", timeout)

    def stop(self) -> Optional[int]:
        """
        Stop twistd (SIGTERM, then SIGKILL if it does not exit in time) and
        return its exit status.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


class Popsrv:
    """
    A running popsrv with a password file and a Maildir root of its own.

    @ivar root: the Maildir root (user alice's Maildir is C{root/alice}).
    @ivar users: the users of the password file, name to password.
    @ivar port: the TCP port it listens on, on 127.0.0.1.
    """

    host = HOST

    def __init__(self, twistd: TwistdProcess, root: Path, users: Dict[str, str], port: int) -> None:
        self.twistd = twistd
        self.root = root
        self.users = users
        self.port = port

    def maildir(self, user: str = "alice") -> str:
        """
        The path of a user's Maildir.
        """
        return str(self.root / user)

    def url(self, path: str = "") -> str:
        """
        A pop3:// URL for curl.
        """
        return f"pop3://{self.host}:{self.port}/{path}"


def writePasswordFile(path: Path, users: Dict[str, str]) -> Path:
    """
    Write a C{file:} checker's password file (lines C{user:password}).
    """
    path.write_text("".join(f"{user}:{password}\n" for user, password in users.items()), encoding="utf-8")
    return path


class Launcher:
    """
    Starts popsrv servers in a directory and stops every one of them at the
    end.
    """

    listen = LISTEN_LOCAL

    def __init__(self, base: Path) -> None:
        self.base = base
        self._started: List[TwistdProcess] = []
        self._count = 0

    def run(self, args: Sequence[str], cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """
        Run C{twistd ARGS} to completion in C{cwd}; see L{runTwistd}.
        """
        return runTwistd(args, cwd, timeout)

    def twistd(self, popsrvArgs: Sequence[str], cwd: Path, **kwargs) -> TwistdProcess:
        """
        Start C{twistd -n popsrv ARGS} (or, given C{application}, C{twistd -n
        -y APPLICATION}; given C{twistdArgs}, with those options of twistd's
        own; given C{twistArgs}, C{twist TWISTARGS popsrv ARGS}) in C{cwd},
        without waiting for it.
        """
        process = TwistdProcess(popsrvArgs, cwd, **kwargs)
        self._started.append(process)
        return process

    def popsrv(
        self,
        *extra: str,
        users: Optional[Dict[str, str]] = None,
        root: Optional[Path] = None,
        auth: Optional[str] = None,
        mbox: bool = False,
    ) -> Popsrv:
        """
        Start popsrv on an ephemeral port of 127.0.0.1 with a fresh Maildir
        root and a password file, and wait until it listens.

        @param auth: the C{--auth} checker instead of the C{file:} checker
            of C{users} (popsrv takes one checker per kind of login).
        @param mbox: serve mbox spools (C{--mbox ROOT/%u}, the directory
            made) instead of Maildirs: then C{maildir(user)} is the spool.
        """
        self._count += 1
        workdir = self.base / f"server{self._count}"
        workdir.mkdir(parents=True)
        users = dict(DEFAULT_USERS if users is None else users)
        if root is None:
            root = workdir / "mail"
        passwords = writePasswordFile(workdir / "passwd", users)
        if mbox:
            root.mkdir(parents=True, exist_ok=True)
        store = ["--mbox", str(root / "%u")] if mbox else ["--maildir-root", str(root)]
        args = [
            "--listen", LISTEN_LOCAL,
            *store,
            "--auth", auth or f"file:{passwords}",
            *extra,
        ]
        process = self.twistd(args, workdir)
        port = process.waitListening()
        return Popsrv(process, root, users, port)

    def stopAll(self) -> None:
        """
        Stop every twistd this launcher started.
        """
        started, self._started = self._started, []
        for process in started:
            process.stop()


class ReactorThread:
    """
    The global reactor, running in a thread of its own for the tests that
    need real sockets and threads in this process; L{call} runs code in it
    and waits for the result.
    """

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self._thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False}, name="reactor", daemon=True
        )

    def start(self) -> None:
        started = threading.Event()
        self.reactor.callWhenRunning(started.set)
        self._thread.start()
        assert started.wait(START_TIMEOUT), "the reactor did not start"

    def call(self, function: Callable, *args, timeout: float = 60.0, **kwargs):
        """
        Run C{function(*args, **kwargs)} in the reactor thread and return
        its result (waiting for a L{Deferred} or coroutine to fire); raise
        what it raises.

        @raise AssertionError: if there is no result within C{timeout}.
        """
        done = threading.Event()
        outcome: list = []

        def run() -> None:
            def callFunction():
                result = function(*args, **kwargs)
                return ensureDeferred(result) if inspect.isawaitable(result) else result

            maybeDeferred(callFunction).addBoth(lambda result: (outcome.append(result), done.set()))

        self.reactor.callFromThread(run)
        assert done.wait(timeout), f"{function!r} gave no result within {timeout}s"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(STOP_TIMEOUT)


