"""
End-to-end tests of popsrv against hostile clients: the real server under
twistd (in one process and with C{--workers 2}), a passwd file with hashed
users, and raw POP3 over TCP on 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import poplib
import socket
from typing import TYPE_CHECKING, Iterator, List

import pytest

from popsrv.auth import schemes
from popsrv.store.maildir import deliver
from tests.support.servers import LISTEN_LOCAL

if TYPE_CHECKING:
    from tests.support.servers import Launcher, TwistdProcess

HOST = "127.0.0.1"
SOCKET_TIMEOUT = 30.0
PASSWORD = "correct horse"
# Stored by hand: popsrv itself refuses to store a password this long.
LONG_PASSWORD = "L" * 1025
REFUSED = b"-ERR [AUTH] invalid user name or password"


class Server:
    """
    A running popsrv with users of a slow scheme (C{crypt}, SHA512-CRYPT) and
    of C{{PLAIN}} (C{plain}).
    """

    def __init__(self, twistd: TwistdProcess, port: int) -> None:
        self.twistd = twistd
        self.port = port

    def connect(self) -> Line:
        """A raw connection, greeted."""
        line = Line(socket.create_connection((HOST, self.port), timeout=SOCKET_TIMEOUT))
        assert line.read().startswith(b"+OK")
        return line


class Line:
    """
    A raw POP3 connection: send a line, read a line.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data + b"\r\n")

    def read(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def ask(self, data: bytes) -> bytes:
        self.send(data)
        return self.read()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def processTree(pid: int) -> List[int]:
    """
    C{pid} and every process below it.
    """
    children: dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def peakMemory(pid: int) -> int:
    """
    The largest resident size (VmHWM, in KiB) any process of C{pid}'s tree
    has had.
    """
    peak = 0
    for member in processTree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "workers-2"])
def server(request: pytest.FixtureRequest, moduleLauncher: Launcher) -> Iterator[Server]:
    """
    popsrv with a passwd file, in one process or with two workers.
    """
    workers = request.param
    workdir = moduleLauncher.base / f"security-{workers}"
    root = workdir / "mail"
    workdir.mkdir(parents=True)
    passwd = workdir / "passwd"
    passwd.write_text(
        f"crypt:{schemes.hashPassword(PASSWORD, 'SHA512-CRYPT')}\nplain:{{PLAIN}}{PASSWORD}\n"
        f"long:{{PLAIN}}{LONG_PASSWORD}\n",
        encoding="utf-8",
    )
    for user in ("crypt", "plain"):
        deliver(str(root / user), b"Subject: hello\r\n\r\nHello.\r\n")
    args = ["--listen", LISTEN_LOCAL, "--maildir-root", str(root), "--auth", f"passwd-file:{passwd}"]
    if workers > 1:
        args += ["--workers", str(workers)]
    process = moduleLauncher.twistd(args, workdir)
    port = process.waitListening()
    if workers > 1:
        process.waitFor(r"worker .* (started|ready)|listening", timeout=30)
    yield Server(process, port)


def logIn(server: Server, user: str = "crypt", password: str = PASSWORD) -> None:
    """Log in with USER/PASS and quit: it must work."""
    client = poplib.POP3(HOST, server.port, timeout=SOCKET_TIMEOUT)
    try:
        client.user(user)
        assert client.pass_(password).startswith(b"+OK")
    finally:
        client.quit()


def test_long_passwords_cost_neither_memory_nor_time(server: Server) -> None:
    """
    A 40,000-octet password sent as an AUTH LOGIN continuation line, and a
    12,000-octet one in a PLAIN initial response, against a SHA512-CRYPT
    user, fail as a wrong password does, without the server growing (the
    square of the length would be 1.6 GB), and a real login still works.
    """
    logIn(server)
    before = peakMemory(server.twistd.process.pid)
    line = server.connect()
    assert line.ask(b"AUTH LOGIN").startswith(b"+ ")
    assert line.ask(base64.b64encode(b"crypt")).startswith(b"+ ")
    assert line.ask(base64.b64encode(b"x" * 40000)) == REFUSED
    plain = base64.b64encode(b"\0crypt\0" + b"y" * 12000)
    assert line.ask(b"AUTH PLAIN " + plain) == REFUSED
    line.close()
    logIn(server)
    grown = peakMemory(server.twistd.process.pid) - before
    assert grown < 64 * 1024, f"the server grew by {grown} KiB"


def test_password_over_the_limit_fails_like_a_wrong_one(server: Server) -> None:
    """
    A password of 1,025 octets gets the wrong-password reply, even where it
    is the one stored.
    """
    line = server.connect()
    assert line.ask(b"AUTH PLAIN " + base64.b64encode(b"\0long\0" + LONG_PASSWORD.encode())) == REFUSED
    assert line.ask(b"AUTH PLAIN " + base64.b64encode(b"\0plain\0" + PASSWORD.encode())).startswith(b"+OK")
    line.close()


def test_continuation_lines_keep_the_auth_limit(server: Server) -> None:
    """
    A SASL response line over AUTH's 16 KiB is refused as failed credentials.
    """
    mark = server.twistd.mark()
    line = server.connect()
    assert line.ask(b"AUTH LOGIN").startswith(b"+ ")
    assert line.ask(b"A" * 16384) == REFUSED
    assert line.ask(b"CAPA") == b"+OK capability list follows"
    line.close()
    server.twistd.waitFor("response over 16384 octets", since=mark)
