"""
A real HAProxy for the end-to-end tests, in front of popsrv's C{haproxy:}
listeners, as an operator would run it: TCP mode, one frontend per backend,
each backend one server that receives the PROXY header (C{send-proxy} or
C{send-proxy-v2}).

Each frontend listens on an ephemeral port of 127.0.0.1 that the tests bind
themselves and hand to HAProxy (C{bind fd@N}), so its port is known before
HAProxy starts and nothing else can take it.  HAProxy runs in the
foreground (C{-db}) from a configuration in the test's directory; it is
ready once its stats socket answers, and it is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import attr

from tests.support.servers import HOST, STOP_TIMEOUT

START_TIMEOUT = 20.0
DEBIAN_PATH = "/usr/sbin/haproxy"


def findHAProxy() -> Optional[str]:
    """
    The path of the C{haproxy} binary (Debian installs it in C{/usr/sbin},
    which a user's C{PATH} may lack), or L{None}.
    """
    found = shutil.which("haproxy")
    if found is not None:
        return found
    return DEBIAN_PATH if os.access(DEBIAN_PATH, os.X_OK) else None


@attr.s(frozen=True, auto_attribs=True)
class Backend:
    """
    One way through HAProxy: a frontend and the popsrv port its backend's
    server forwards to, with the PROXY header's version.

    @ivar name: the frontend's and backend's name in the configuration.
    @ivar port: popsrv's port (a C{haproxy:} listener on 127.0.0.1).
    @ivar sendProxy: C{"send-proxy"} (version 1) or C{"send-proxy-v2"}.
    """

    name: str
    port: int
    sendProxy: str


class HAProxy:
    """
    A running HAProxy with a frontend for each L{Backend}.

    @ivar ports: each frontend's port on 127.0.0.1, by the backend's name.
    """

    def __init__(self, binary: str, directory: Path, backends: Sequence[Backend]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.stats = directory / "stats.sock"
        self.ports: Dict[str, int] = {}
        listening: List[socket.socket] = []
        sections = [
            "global",
            "    nbthread 1",
            "    maxconn 1000",
            f"    stats socket {self.stats} mode 600 level user",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 60s",
            "    timeout server 60s",
        ]
        try:
            for backend in backends:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((HOST, 0))
                sock.listen(128)
                listening.append(sock)
                self.ports[backend.name] = sock.getsockname()[1]
                sections += [
                    f"frontend {backend.name}",
                    f"    bind fd@{sock.fileno()}",
                    f"    default_backend {backend.name}",
                    f"backend {backend.name}",
                    f"    server popsrv {HOST}:{backend.port} {backend.sendProxy}",
                ]
            self.config = directory / "haproxy.cfg"
            self.config.write_text("\n".join(sections) + "\n", encoding="utf-8")
            self.log = (directory / "haproxy.log").open("wb")
            self.process = subprocess.Popen(
                [binary, "-f", str(self.config), "-db"],
                cwd=str(directory),
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                pass_fds=[sock.fileno() for sock in listening],
            )
        finally:
            # HAProxy holds its own copies of the listening sockets.
            for sock in listening:
                sock.close()
        try:
            self._waitReady()
        except BaseException:
            self.stop()
            raise

    def _waitReady(self) -> None:
        """
        Wait until HAProxy's stats socket answers (it then serves its
        frontends), or fail with its output if it exits or the deadline
        passes.
        """
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy exited (status {self.process.returncode}):\n{self.output()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stats:
                    stats.settimeout(START_TIMEOUT)
                    stats.connect(str(self.stats))
                    stats.sendall(b"show info\n")
                    if stats.recv(4096).startswith(b"Name: HAProxy"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy not ready within {START_TIMEOUT} s:\n{self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        """What HAProxy printed so far."""
        self.log.flush()
        return (self.directory / "haproxy.log").read_text("utf-8", "replace")

    def connect(self, name: str, source: str, timeout: float = 30.0) -> socket.socket:
        """
        A TCP connection to frontend C{name} from address C{source} (one of
        127.0.0.0/8, which all reach this machine).
        """
        return socket.create_connection((HOST, self.ports[name]), timeout=timeout, source_address=(source, 0))

    def stop(self) -> None:
        """
        Stop HAProxy by its PID (SIGTERM, then SIGKILL if it does not exit
        in time).
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self.log.close()
