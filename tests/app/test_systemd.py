"""
Socket activation as contrib/systemd/popsrv.socket and popsrv.service set
it up: the service's own command line, run under systemd-socket-activate
with two named sockets (pop3 and pop3s) on 127.0.0.1; and implicit TLS
(C{tls:}) over any endpoint, with the certificate reloaded on SIGHUP.
"""

from __future__ import annotations

import json
import os
import poplib
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List

import pytest
from twisted.python import usage

from popsrv.app.listening import splitTLS
from popsrv.app.options import Options
from tests.support.certificates import makePKI
from tests.support.servers import TwistdProcess, twistdEnvironment, writePasswordFile

if TYPE_CHECKING:
    from tests.support.servers import Launcher

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
HOST = "127.0.0.1"
TIMEOUT = 30.0


def serviceArguments() -> List[str]:
    """The popsrv options of popsrv.service's ExecStart line."""
    text = (CONTRIB / "popsrv.service").read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    words = shlex.split(line.partition("=")[2])
    return words[words.index("popsrv") + 1:]


def freePort() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Activated:
    """popsrv.service's command line under systemd-socket-activate."""

    def __init__(self, tmp_path: Path, extra: List[str]) -> None:
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            pytest.fail("systemd-socket-activate is missing (apt-get install systemd)")
        self.pki = makePKI(tmp_path / "pki")
        passwd = writePasswordFile(tmp_path / "passwd", {"alice": "secret"})
        paths = {
            "/etc/popsrv/cert.pem": str(self.pki.chain), "/etc/popsrv/key.pem": str(self.pki.key),
            "passwd-file:/etc/popsrv/passwd": f"file:{passwd}", "/var/mail/popsrv": str(tmp_path / "mail"),
        }
        arguments = [paths.get(word, word) for word in serviceArguments()] + extra
        self.ports = [freePort(), freePort()]
        command = [
            activate, "-l", f"{HOST}:{self.ports[0]}", "-l", f"{HOST}:{self.ports[1]}", "--fdname=pop3:pop3s",
            "-E", "PYTHONPATH", "-E", "STATE_DIRECTORY",
            os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "--logfile=-", "popsrv",
            *arguments,
        ]
        self.process = subprocess.Popen(
            command, cwd=str(tmp_path), env=twistdEnvironment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._lines: List[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        # systemd-socket-activate binds both sockets, then waits for a
        # client before it starts popsrv.
        with self._changed:
            listening = self._changed.wait_for(
                lambda: sum("Listening on" in line for line in self._lines) == 2 or self.process.poll() is not None,
                timeout=TIMEOUT,
            )
        assert listening and self.process.poll() is None, self.output()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            with self._changed:
                self._lines.append(raw.decode("utf-8", "replace"))
                self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=TIMEOUT)
        self._reader.join(TIMEOUT)
        return self.output()


@pytest.fixture
def activated(tmp_path: Path) -> Iterator[Activated]:
    server = Activated(tmp_path, [])
    yield server
    server.stop()


def test_theUnitsSocketsAreServed(activated: Activated) -> None:
    """
    The service's own options serve POP3 with STLS on the first socket and
    implicit TLS on the second, both handed over by name; the sockets are
    systemd's, so popsrv binds nothing itself.
    """
    context = ssl.create_default_context(cafile=str(activated.pki.ca))
    # The sockets exist before popsrv starts; the first client waits for it.
    plain = poplib.POP3(HOST, activated.ports[0], timeout=TIMEOUT)
    try:
        assert plain.getwelcome().startswith(b"+OK popsrv ready")
        assert "STLS" in plain.capa()
        plain.stls(context)
        plain.user("alice")
        assert plain.pass_("secret").startswith(b"+OK alice has 0 messages")
    finally:
        plain.quit()
    secure = poplib.POP3_SSL(HOST, activated.ports[1], context=context, timeout=TIMEOUT)
    try:
        assert "STLS" not in secure.capa()
        secure.user("alice")
        assert secure.pass_("secret").startswith(b"+OK")
    finally:
        secure.quit()


def test_workersAreRefusedWithSystemdSockets(tmp_path: Path) -> None:
    """--workers with systemd's sockets stops the start with one clear line."""
    server = Activated(tmp_path, ["--workers", "2"])
    with socket.create_connection((HOST, server.ports[0]), timeout=TIMEOUT) as sock:
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    output = server.stop()
    assert "--workers serves tcp:, tcp6: and ssl: listeners" in output
    assert "Traceback" not in output


def test_implicitTLSNeedsACertificate() -> None:
    """tls: without --tls-cert, or over an unusable endpoint, is a usage error."""
    assert splitTLS("TLS:tcp:995") == ("tcp:995", True)
    assert splitTLS("tcp:110") == ("tcp:110", False)
    with pytest.raises(usage.UsageError, match="needs --tls-cert and --tls-key"):
        Options().parseOptions(["--auth", "memory:a:b", "--listen", "tls:tcp:995"])
    with pytest.raises(usage.UsageError, match="is not a usable endpoint"):
        Options().parseOptions(["--auth", "memory:a:b", "--listen", "tls:nonsense:1"])


@pytest.mark.parametrize("workers", [1, 2])
def test_implicitTLSOverTCPReloadsItsCertificate(launcher: Launcher, tmp_path: Path, workers: int) -> None:
    """
    tls:tcp: serves implicit TLS with --tls-cert, in one process and with
    workers; after SIGHUP, new connections get the new certificate.
    """
    first = makePKI(tmp_path / "first")
    second = makePKI(tmp_path / "second")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(first.chain, cert)
    shutil.copy(first.key, key)
    passwd = writePasswordFile(tmp_path / "passwd", {"alice": "secret"})
    process: TwistdProcess = launcher.twistd(
        ["--listen", "tls:tcp:0:interface=127.0.0.1", "--tls-cert", str(cert), "--tls-key", str(key),
         "--auth", f"file:{passwd}", "--maildir-root", str(tmp_path / "mail"), "--workers", str(workers)], tmp_path,
    )
    port = process.waitListening()
    for index in range(workers if workers > 1 else 0):
        process.waitFor(rf"worker {index}\] worker ready", timeout=30)

    def served(ca: Path) -> bytes:
        client = poplib.POP3_SSL(HOST, port, context=ssl.create_default_context(cafile=str(ca)), timeout=TIMEOUT)
        try:
            client.user("alice")
            return client.pass_("secret")
        finally:
            client.quit()

    assert served(first.ca).startswith(b"+OK")
    shutil.copy(second.chain, cert)
    shutil.copy(second.key, key)
    mark = process.mark()
    process.process.send_signal(signal.SIGHUP)
    if workers == 1:
        process.waitFor("reloaded the TLS certificate", since=mark)
    for index in range(workers if workers > 1 else 0):
        process.waitFor(rf"worker {index}\].*reloaded the TLS certificate", since=mark)
    for _ in range(4):
        assert served(second.ca).startswith(b"+OK")
    with pytest.raises(ssl.SSLCertVerificationError):
        served(first.ca)


def test_theContainerRunsUnprivilegedWithUsableOptions(tmp_path: Path) -> None:
    """
    contrib/docker/Dockerfile runs popsrv as a non-root user, and its
    command's popsrv options are accepted (with this test's files in place
    of the mounted ones).
    """
    text = (CONTRIB.parent / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    command = re.search(r"^CMD (\[.*?\])$", text.replace("\\\n", ""), re.MULTILINE | re.DOTALL)
    assert command is not None
    words = json.loads(command.group(1))
    pki = makePKI(tmp_path / "pki")
    passwd = writePasswordFile(tmp_path / "passwd", {"alice": "secret"})
    paths = {
        "/etc/popsrv/cert.pem": str(pki.chain), "/etc/popsrv/key.pem": str(pki.key),
        "passwd-file:/etc/popsrv/passwd": f"passwd-file:{passwd}", "/var/mail/popsrv": str(tmp_path / "mail"),
    }
    options = Options()
    options.parseOptions([paths.get(word, word) for word in words[words.index("popsrv") + 1:]])
    assert options["listen"] == ["tcp:1110", "tls:tcp:1995"]


def test_aFailedTLSHandshakeIsLoggedWithWhy(launcher: Launcher, tmp_path: Path) -> None:
    """
    A client that speaks plain POP3 to the implicit-TLS port, and one that
    does not trust the certificate, end with a tls-failed event saying why,
    with the session's id.
    """
    pki = makePKI(tmp_path / "pki")
    passwd = writePasswordFile(tmp_path / "passwd", {"alice": "secret"})
    process: TwistdProcess = launcher.twistd(
        ["--listen", "tls:tcp:0:interface=127.0.0.1", "--tls-cert", str(pki.chain), "--tls-key", str(pki.key),
         "--auth", f"file:{passwd}", "--maildir-root", str(tmp_path / "mail")], tmp_path,
    )
    port = process.waitListening()
    mark = process.mark()
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"USER alice\r\n" * 20)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    line = process.waitFor(r"TLS with 127\.0\.0\.1:\d+ failed: .+", since=mark)
    assert "wrong version number" in line.group(0) or "http request" in line.group(0) or "SSL" in line.group(0)
    mark = process.mark()
    with pytest.raises(ssl.SSLError):
        poplib.POP3_SSL(HOST, port, context=ssl.create_default_context(), timeout=TIMEOUT)
    process.waitFor(r"TLS with 127\.0\.0\.1:\d+ failed: ", since=mark)
