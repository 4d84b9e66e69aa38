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
import signal
import subprocess
import sys
import tempfile
import time

__all__ = ["RunningServer", "available", "start"]

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "twistedmail_server.py")
_TICKS = os.sysconf("SC_CLK_TCK")
_START_SECONDS = 20


class RunningServer:
    """
    A running twisted.mail.pop3 server process.

    @ivar name: C{"twisted.mail.pop3"}, with C{" (TCP_NODELAY)"} if set.
    @ivar port: its TCP port on 127.0.0.1.
    """

    def __init__(self, process: subprocess.Popen, port: int, nodelay: bool, workdir: str) -> None:
        self.name = "twisted.mail.pop3 (TCP_NODELAY)" if nodelay else "twisted.mail.pop3"
        self.port = port
        self._process = process
        self._workdir = workdir
        self._finalCPU: float | None = None

    def cpuSeconds(self) -> float:
        """
        User plus system CPU seconds of the server process so far (at its
        stop, once stopped).
        """
        if self._finalCPU is not None:
            return self._finalCPU
        with open(f"/proc/{self._process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def rssKilobytes(self) -> int:
        """
        Resident memory of the server process, in KiB.
        """
        with open(f"/proc/{self._process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        """
        SIGTERM the server, wait up to 10 s, SIGKILL it if needed; remove
        its working directory.
        """
        if self._process.poll() is None:
            try:
                self._finalCPU = self.cpuSeconds()
            except OSError:
                pass
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._process.stdout is not None:
            self._process.stdout.close()
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
