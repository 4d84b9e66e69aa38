"""
twistd popsrv refuses to start when an --auth checker's file cannot be
used (file:, passwd-file:, pgsql:), with one line naming the option and the
problem: real twistd processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List

import pytest

from tests.support.servers import LISTEN_LOCAL, TWISTD, Launcher, runTwistd, twistdEnvironment

KINDS = ["file", "passwd-file", "pgsql"]

def twistdArgs(*auth: str) -> List[str]:
    """
    The arguments of a foreground twistd popsrv with these --auth values.
    """
    args = ["-n", "--pidfile=", "--logfile=-", "popsrv", "--listen", LISTEN_LOCAL]
    for value in auth:
        args += ["--auth", value]
    return args


def assertRefused(result: subprocess.CompletedProcess, line: str) -> None:
    """
    twistd stopped with a non-zero status, its last line ends with
    C{line} (twistd prints the usage before it), and it neither listened
    nor printed a traceback or Twisted's own warning.
    """
    text = result.stdout.decode("utf-8", "replace")
    assert result.returncode != 0, text
    assert text.splitlines()[-1].endswith(": " + line), text
    for unwanted in ("Traceback", "popsrv listening", "Unexpected error", "not a valid file"):
        assert unwanted not in text, text


@pytest.mark.parametrize("kind", KINDS)
def test_aMissingFileIsRefused(tmp_path: Path, kind: str) -> None:
    """
    A checker whose file does not exist stops the start: for file:, which
    Twisted only warns about (every login would fail), as for the others.
    """
    missing = tmp_path / "nonexistent"
    assertRefused(runTwistd(twistdArgs(f"{kind}:{missing}"), tmp_path), f"--auth {kind}:{missing}: no such file")


@pytest.mark.parametrize("kind", KINDS)
def test_aDirectoryIsRefused(tmp_path: Path, kind: str) -> None:
    """
    A directory where the file should be is refused.
    """
    assertRefused(runTwistd(twistdArgs(f"{kind}:{tmp_path}"), tmp_path),
                  f"--auth {kind}:{tmp_path}: a directory, not a file")


@pytest.mark.parametrize("kind", KINDS)
def test_aFifoIsRefusedWithoutBlocking(tmp_path: Path, kind: str) -> None:
    """
    A FIFO is refused without being opened (which would wait for a writer).
    """
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assertRefused(runTwistd(twistdArgs(f"{kind}:{fifo}"), tmp_path), f"--auth {kind}:{fifo}: not a regular file")


@pytest.mark.parametrize("kind", KINDS)
def test_noPathIsRefused(tmp_path: Path, kind: str) -> None:
    """
    A path checker without a path says how to give one.
    """
    assertRefused(runTwistd(twistdArgs(f"{kind}:"), tmp_path),
                  f"--auth {kind} needs the path of a file: --auth {kind}:PATH")


SETPRIV = shutil.which("setpriv")
# Runs a command as root without the capabilities that let root read any
# file, so that file modes apply to it as to any other user.
WITHOUT_OVERRIDE = [SETPRIV or "setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
needsRootAndSetpriv = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv (util-linux) to give up reading any file"
)


@needsRootAndSetpriv
@pytest.mark.parametrize("kind", KINDS)
def test_anUnreadableFileIsRefused(tmp_path: Path, kind: str) -> None:
    """
    A file that the user starting twistd cannot read is refused (here
    twistd runs as root without the capability to read any file, and the
    file has mode 000).
    """
    secret = tmp_path / "users"
    secret.write_text("alice:secret\n")
    secret.chmod(0)
    result = subprocess.run(
        [*WITHOUT_OVERRIDE, TWISTD, *twistdArgs(f"{kind}:{secret}")], cwd=str(tmp_path), env=twistdEnvironment(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
    )
    assertRefused(result, f"--auth {kind}:{secret}: cannot read it: permission denied")


def test_syntaxErrorsStillNameTheFileAndLine(tmp_path: Path) -> None:
    """
    A file that exists but cannot be used is refused with the checker's own
    one-line reason, naming the file: a passwd-file line without a colon, a
    pgsql settings file without a query.
    """
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:{PLAIN}secret\nnot a user line\n")
    assertRefused(runTwistd(twistdArgs(f"passwd-file:{passwd}"), tmp_path),
                  f"--auth passwd-file: {passwd} line 2: a line is user:{{SCHEME}}secret, but there is no ':'")
    settings = tmp_path / "pgsql.conf"
    settings.write_text("[pgsql]\nconninfo = dbname=mail\n")
    assertRefused(runTwistd(twistdArgs(f"pgsql:{settings}"), tmp_path),
                  f"--auth pgsql: {settings}: [pgsql] needs query = ...")


def test_anUsableFileStarts(launcher, tmp_path: Path) -> None:
    """
    A readable file: checker file starts as before, without Twisted's
    warning.
    """
    server = launcher.popsrv()
    assert "not a valid file" not in server.twistd.output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_aBusyPortStopsTheStartWithOneLine(launcher: Launcher, tmp_path: Path, workers: str) -> None:
    """
    A port another program holds stops twistd popsrv with one line naming
    it, not a traceback, in one process and with workers.
    """
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = launcher.run(
            ["-n", "popsrv", "--auth", "memory:a:b", "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--workers", workers], tmp_path,
        )
    assert result.returncode != 0
    assert f"popsrv: cannot listen on 127.0.0.1:{port}: Address already in use".encode() in result.stdout
    assert b"Traceback" not in result.stdout
