"""
A real PostgreSQL server for the tests, from the operating system's own
packages (Debian's C{postgresql}): initialised in a temporary directory and
listening on 127.0.0.1 on a free port, run as an unprivileged user when the
tests run as root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import List, Optional

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
READY = "database system is ready to accept connections"
ADMIN = "popsrv_admin"


def findBinaries() -> Optional[str]:
    """
    The directory holding C{initdb} and C{postgres}: the newest of Debian's
    C{/usr/lib/postgresql/*/bin}, or the one on C{PATH}; L{None} if there
    is none.
    """

    def version(directory: str):
        name = os.path.basename(os.path.dirname(directory))
        return [int(part) for part in name.split(".") if part.isdigit()]

    found = sorted(
        (os.path.dirname(path) for path in glob.glob("/usr/lib/postgresql/*/bin/postgres")), key=version
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb and os.path.exists(os.path.join(os.path.dirname(initdb), "postgres")):
        return os.path.dirname(initdb)
    return None


def canInstall() -> bool:
    """
    Whether this machine can get PostgreSQL from Debian packages.
    """
    return shutil.which("apt-get") is not None and shutil.which("dpkg") is not None


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 that nothing listens on just now.
    """
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class PostgresServer:
    """
    One PostgreSQL cluster in a temporary directory, with a superuser
    L{ADMIN} whose password is random, reachable over TCP on 127.0.0.1 only
    (passwords required) and over a UNIX socket in the directory.

    @ivar port: the TCP port.
    @ivar directory: the temporary directory (data, socket, log).
    """

    def __init__(self, binaries: str) -> None:
        self.binaries = binaries
        self.directory = tempfile.mkdtemp(prefix="popsrv-pgsql-")
        self.data = os.path.join(self.directory, "data")
        self.password = secrets.token_urlsafe(16)
        self.port = freePort()
        self.process: Optional[subprocess.Popen] = None
        self._lines: List[str] = []
        self._changed = threading.Condition()
        self._account = self._unprivilegedAccount()
        if self._account is not None:
            os.chown(self.directory, self._account.pw_uid, self._account.pw_gid)
            os.chmod(self.directory, 0o700)

    @staticmethod
    def _unprivilegedAccount() -> Optional[pwd.struct_passwd]:
        """
        The account to run PostgreSQL as: ourselves, unless we are root;
        then the C{postgres} account the package creates, or C{nobody}.
        """
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise RuntimeError("running as root, and there is neither a postgres nor a nobody account to run PostgreSQL")

    def _userArguments(self) -> dict:
        if self._account is None:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}

    def initialise(self) -> None:
        """
        Create the cluster (C{initdb}), without fsync: the tests do not
        need the data to survive a crash.
        """
        passwordFile = os.path.join(self.directory, "password")
        with open(passwordFile, "w", encoding="ascii") as stream:
            stream.write(self.password + "\n")
        if self._account is not None:
            os.chown(passwordFile, self._account.pw_uid, self._account.pw_gid)
        result = subprocess.run(
            [
                os.path.join(self.binaries, "initdb"), "--pgdata", self.data, "--username", ADMIN,
                "--pwfile", passwordFile, "--auth-local", "trust", "--auth-host", "scram-sha-256",
                "--encoding", "UTF8", "--locale", "C", "--no-sync", "--no-instructions",
            ],
            cwd=self.directory, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT, env={**os.environ, "LC_ALL": "C"}, **self._userArguments(),
        )
        os.unlink(passwordFile)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout.decode(errors='replace')}")

    def start(self) -> None:
        """
        Start the server and wait until it accepts connections.
        """
        assert self.process is None, "already running"
        with self._changed:
            since = len(self._lines)
        self.process = subprocess.Popen(
            [
                os.path.join(self.binaries, "postgres"), "-D", self.data, "-p", str(self.port),
                "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={self.directory}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "logging_collector=off", "-c", "max_connections=50",
            ],
            cwd=self.directory, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "LC_ALL": "C"}, **self._userArguments(),
        )
        threading.Thread(target=self._collect, args=(self.process,), name="postgres-log", daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        with self._changed:
            while not any(READY in line for line in self._lines[since:]):
                left = deadline - time.monotonic()
                if self.process.poll() is not None or left <= 0:
                    output = "\n".join(self._lines[since:])
                    raise RuntimeError(f"PostgreSQL did not start within {START_TIMEOUT}s:\n{output}")
                self._changed.wait(min(left, 1.0))

    def _collect(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            with self._changed:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        process.stdout.close()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        """
        The server's output so far.
        """
        with self._changed:
            return "\n".join(self._lines)

    def stop(self) -> None:
        """
        Stop the server (fast shutdown: sessions are ended), by its PID, and
        wait until it has exited.
        """
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def remove(self) -> None:
        """
        Stop the server and remove its directory.
        """
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def conninfo(self, user: str = ADMIN, password: Optional[str] = None, dbname: str = "postgres", **extra) -> str:
        """
        A libpq connection string to this server over TCP.
        """
        if user == ADMIN and password is None:
            password = self.password
        parts = {"host": HOST, "port": self.port, "dbname": dbname, "user": user, "password": password, **extra}
        return " ".join(f"{key}={value}" for key, value in parts.items() if value is not None)
