"""
Runs Twisted's own POP3 server (twisted.mail.pop3) for the benchmarks.

The server is L{twistedmail_server} (next to this module) in a subprocess of
the current interpreter, on a free port of 127.0.0.1. With C{nodelay} it sets
TCP_NODELAY on each connection: without it, the end of each RETR reply,
which twisted.mail.pop3 writes separately after the message, waits in
Nagle's algorithm for the client's delayed ACK (about 40 ms on Linux).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time

from .processes import ProcessTree

__all__ = ["RunningServer", "available", "start"]

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "twistedmail_server.py")
_START_SECONDS = 20


class RunningServer(ProcessTree):
    """
    A running twisted.mail.pop3 server process.

    @ivar name: C{"twisted.mail.pop3"}, with C{" (TCP_NODELAY)"} if set.
    @ivar port: its TCP port on 127.0.0.1.
    """

    def __init__(self, process: subprocess.Popen, port: int, nodelay: bool, workdir: str) -> None:
        super().__init__(process)
        self.name = "twisted.mail.pop3 (TCP_NODELAY)" if nodelay else "twisted.mail.pop3"
        self.port = port
        self._workdir = workdir

    def stop(self) -> None:
        """
        Stop the server and remove its working directory.
        """
        super().stop()
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


def available() -> str | None:
    """
    Return None: twisted.mail.pop3 is part of Twisted, which popsrv needs
    anyway (or the reason it cannot be imported).
    """
    try:
        import twisted.mail.pop3  # noqa: F401
    except ImportError as error:
        return f"twisted.mail.pop3 cannot be imported: {error}"
    return None


def start(maildirRoot: str, users: dict[str, str], nodelay: bool = True) -> RunningServer:
    """
    Start the server as a subprocess (sys.executable, the script next to
    this module) on a free port of 127.0.0.1, serving the Maildirs
    C{maildirRoot/<user>} to C{users} (name to password); wait (deadline
    20 s) for its 'listening on' line; return.
    """
    for user, password in users.items():
        if ":" in user or any(c in user + password for c in "\r\n"):
            raise ValueError(f"user {user!r}: no ':' in names, no line ends in names or passwords")
    workdir = tempfile.mkdtemp(prefix="twistedmail-bench-")
    passwd = os.path.join(workdir, "passwd")
    with open(passwd, "w") as f:
        f.writelines(f"{user}:{password}\n" for user, password in users.items())
    log = open(os.path.join(workdir, "server.log"), "wb")
    command = [sys.executable, SCRIPT, "--root", maildirRoot, "--passwd", passwd, "--port", "0"]
    process = subprocess.Popen(
        command + (["--nodelay"] if nodelay else []),
        cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
    )
    log.close()
    output = b""
    deadline = time.monotonic() + _START_SECONDS
    while b"\n" not in output:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([process.stdout], [], [], left)[0]:
            break
        data = os.read(process.stdout.fileno(), 4096)
        if not data:
            break
        output += data
    match = re.match(rb"listening on 127\.0\.0\.1:(\d+)\n", output)
    if match:
        return RunningServer(process, int(match.group(1)), nodelay, workdir)
    server = RunningServer(process, 0, nodelay, workdir)
    with open(os.path.join(workdir, "server.log"), "rb") as f:
        errors = f.read()[-2000:].decode("utf-8", "replace")
    server.stop()
    raise RuntimeError(f"twisted.mail.pop3 did not start listening: {output!r}\n{errors}")
