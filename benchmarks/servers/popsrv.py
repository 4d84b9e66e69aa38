"""
Runs popsrv (`twistd -n popsrv`, from this checkout) for the benchmarks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from .processes import ProcessTree

__all__ = ["RunningServer", "available", "start"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RunningServer(ProcessTree):
    """
    A popsrv process serving a Maildir root on 127.0.0.1.
    """

    def __init__(
        self, process: subprocess.Popen, port: int, workdir: tempfile.TemporaryDirectory, name: str = "popsrv"
    ) -> None:
        super().__init__(process)
        self.name = name
        self.port = port
        self._workdir = workdir

    def stop(self) -> None:
        """
        Stop the server and remove its working directory.
        """
        super().stop()
        self._workdir.cleanup()


def available():
    """
    popsrv is always available: it is this checkout.
    """
    return None


def start(
    maildirRoot: str,
    users: dict[str, str],
    *extra: str,
    authType: str = "passwd-file",
    name: str = "popsrv",
    tree: str = ROOT,
) -> RunningServer:
    """
    Start `twistd -n popsrv` for C{users} (name to password, or to a stored
    C{{SCHEME}secret} for C{authType} C{"passwd-file"}) on a free port of
    127.0.0.1, serving C{maildirRoot}; return once it listens.

    By default users are in a C{passwd-file:} with C{{PLAIN}} entries, as
    Dovecot's are in its runs. C{tree} is the checkout whose code runs
    (this one by default; another, to compare with an earlier version).
    """
    workdir = tempfile.TemporaryDirectory(prefix="popsrv-bench-")
    passwd = os.path.join(workdir.name, "passwd")
    with open(passwd, "w") as f:
        for user, password in users.items():
            if authType == "passwd-file" and not password.startswith("{"):
                password = "{PLAIN}" + password
            f.write(f"{user}:{password}\n")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "--logfile=-", "popsrv", "--listen", "tcp:0:interface=127.0.0.1",
         "--maildir-root", maildirRoot, "--auth", f"{authType}:{passwd}", *extra],
        cwd=workdir.name, env=dict(os.environ, PYTHONPATH=tree),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    for line in iter(process.stdout.readline, b""):
        match = re.search(rb"popsrv listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            # Keep reading the log so that the server never blocks on it.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return RunningServer(process, int(match.group(1)), workdir, name)
        if time.monotonic() > deadline:
            break
    process.kill()
    workdir.cleanup()
    raise RuntimeError("popsrv did not start listening")
