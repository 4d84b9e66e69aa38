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
import threading
import time
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
FULL = b"-ERR [SYS/TEMP] too many connections"
MAX_CONNECTIONS = 30
PER_ADDRESS = 10


class Server:
    """
    A running popsrv with users of a slow scheme (C{crypt}, SHA512-CRYPT) and
    of C{{PLAIN}} (C{plain}).
    """

    def __init__(self, twistd: TwistdProcess, port: int) -> None:
        self.twistd = twistd
        self.port = port

    def connect(self, source: str = HOST) -> Line:
        """A raw connection from C{source}, greeted."""
        line = self.open(source)
        assert line.read().startswith(b"+OK")
        return line

    def open(self, source: str = HOST) -> Line:
        """A raw connection from C{source}, its greeting unread."""
        sock = socket.create_connection((HOST, self.port), timeout=SOCKET_TIMEOUT, source_address=(source, 0))
        return Line(sock)


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
    args = [
        "--listen", LISTEN_LOCAL, "--maildir-root", str(root), "--auth", f"passwd-file:{passwd}",
        "--max-connections", str(MAX_CONNECTIONS),
    ]
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


def test_connection_limits_hold_across_processes(server: Server) -> None:
    """
    The eleventh connection from one address, and the thirty-first in all,
    get one [SYS/TEMP] line and are closed at once, wherever the kernel
    hands them (one process or two workers); everyone else is served, and
    a closed connection makes room again.
    """
    held = [server.connect("127.0.0.4") for _ in range(PER_ADDRESS)]
    over = server.open("127.0.0.4")
    assert over.read() == FULL
    assert over.read() == b""
    over.close()
    for source in ("127.0.0.5", "127.0.0.6"):
        held += [server.connect(source) for _ in range(PER_ADDRESS)]
    full = server.open("127.0.0.7")
    assert full.read() == FULL
    full.close()
    held.pop().close()
    deadline = time.monotonic() + 10
    while True:
        line = server.open("127.0.0.7")
        greeting = line.read()
        line.close()
        if greeting.startswith(b"+OK") or time.monotonic() > deadline:
            break
    assert greeting.startswith(b"+OK")
    for line in held:
        line.close()


def test_login_timeout_is_shorter(launcher: Launcher) -> None:
    """
    A connection that does not log in is closed after --login-timeout,
    with no reply, in one process and with workers.
    """
    for extra in ([], ["--workers", "2"]):
        popsrv = launcher.popsrv("--login-timeout", "1", *extra)
        sock = socket.create_connection((HOST, popsrv.port), timeout=SOCKET_TIMEOUT)
        started = time.monotonic()
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        assert reader.readline() == b""
        assert time.monotonic() - started < 20
        sock.close()
        popsrv.twistd.stop()


def guess(server: Server, deadline: float, verdicts: List[float], stop: threading.Event) -> None:
    """
    Guess the password of C{crypt} from 127.0.0.3 until C{deadline},
    reconnecting whenever the server closes; record the times of the
    verdicts.
    """
    while time.monotonic() < deadline and not stop.is_set():
        line = server.open("127.0.0.3")
        try:
            if not line.read().startswith(b"+OK"):
                continue  # the connection before is still being closed
            while time.monotonic() < deadline:
                line.send(b"USER crypt")
                if not line.read().startswith(b"+OK"):
                    break
                reply = line.ask(b"PASS wrong")
                if not reply.startswith(b"-ERR [AUTH]"):
                    break
                verdicts.append(time.monotonic())
        except OSError:
            pass
        finally:
            line.close()


def test_penalty_slows_guessers_not_the_owner(server: Server) -> None:
    """
    Ten parallel guessers from one address get at most ten verdicts in
    30 s, while the right password from another address logs in at once.
    """
    verdicts: List[float] = []
    stop = threading.Event()
    started = time.monotonic()
    deadline = started + 30
    guessers = [threading.Thread(target=guess, args=(server, deadline, verdicts, stop)) for _ in range(10)]
    for thread in guessers:
        thread.start()
    try:
        waitUntil = time.monotonic() + 20
        while len(verdicts) < 6 and time.monotonic() < waitUntil:
            stop.wait(0.05)
        timings = []
        for _ in range(3):
            begun = time.monotonic()
            owner = server.connect("127.0.0.2")
            assert owner.ask(b"USER crypt").startswith(b"+OK")
            assert owner.ask(b"PASS " + PASSWORD.encode()).startswith(b"+OK crypt has")
            timings.append(time.monotonic() - begun)
            assert owner.ask(b"QUIT").startswith(b"+OK")
            owner.close()
    finally:
        for thread in guessers:
            thread.join(timeout=60)
        stop.set()
    inWindow = [t for t in verdicts if t - started <= 30]
    assert 4 <= len(inWindow) <= 10, inWindow
    assert max(timings) < 2.0, timings


def flood(server: Server, source: str, connections: int) -> int:
    """
    Connect from C{source}, send USER and a wrong PASS for the hashed user,
    and leave without waiting for the verdict, C{connections} times; return
    how many were turned away by a limit instead.
    """
    refused = 0
    for _ in range(connections):
        line = server.open(source)
        try:
            if line.read() == FULL:
                refused += 1
                continue
            line.sock.sendall(b"USER crypt\r\nPASS wrong\r\n")
        finally:
            line.close()
    return refused


def test_a_flood_of_abandoned_logins_is_not_checked(server: Server) -> None:
    """
    Clients from four addresses that send a password and leave at once get
    few of their passwords checked (those whose clients left while waiting
    for their turn are dropped), and a login from another address meanwhile
    succeeds without [SYS/TEMP], promptly.
    """
    mark = server.twistd.mark()
    # Connected first: four flooding addresses may hold up to 40 connections
    # (10 each), over the server's 30, and what is tested here is the
    # login, not the connection limits (tested above).
    owner = server.connect("127.0.0.2")
    floods = [threading.Thread(target=flood, args=(server, f"127.0.0.{n}", 100)) for n in range(10, 14)]
    for thread in floods:
        thread.start()
    try:
        begun = time.monotonic()
        assert owner.ask(b"USER crypt").startswith(b"+OK")
        assert owner.ask(b"PASS " + PASSWORD.encode()).startswith(b"+OK crypt has")
        elapsed = time.monotonic() - begun
        assert owner.ask(b"QUIT").startswith(b"+OK")
        owner.close()
    finally:
        for thread in floods:
            thread.join(timeout=120)
    assert elapsed < 2.0, elapsed
    checked = [line for line in server.twistd.lines[mark:] if "login failed for crypt" in line]
    assert len(checked) < 100, len(checked)


def test_only_malformed_commands_in_a_row_close(server: Server) -> None:
    """
    A long session with many ordinary refusals stays open; nineteen
    malformed lines, a good command, nineteen more do not close it; the
    twentieth in a row gets exactly one line and the connection closes.
    """
    line = server.connect("127.0.0.20")
    assert line.ask(b"USER plain").startswith(b"+OK")
    assert line.ask(b"PASS " + PASSWORD.encode()).startswith(b"+OK plain has")
    for _ in range(40):
        assert line.ask(b"RETR 99").startswith(b"-ERR no such message")
    for _ in range(19):
        assert line.ask(b"XYZZY \x00\xff").startswith(b"-ERR unknown command")
    assert line.ask(b"NOOP") == b"+OK"
    for _ in range(19):
        assert line.ask(b"RETR one").startswith(b"-ERR")
    assert line.ask(b"LIST 1 2 3") == b"-ERR too many bad commands, closing connection"
    assert line.read() == b""
    line.close()


def test_repeated_aborted_auth_counts_as_failures(server: Server) -> None:
    """
    AUTH cancelled with "*" three times is answered as cancelled; then
    each cancel is a failed login, and the third such closes the session.
    """
    line = server.connect("127.0.0.21")
    first = base64.b64encode(b"n,,n=nobody,r=abcdefghijklmnop")
    for _ in range(3):
        assert line.ask(b"AUTH SCRAM-SHA-256 " + first).startswith(b"+ ")
        assert line.ask(b"*") == b"-ERR authentication cancelled"
    for _ in range(2):
        assert line.ask(b"AUTH SCRAM-SHA-256 " + first).startswith(b"+ ")
        assert line.ask(b"*") == REFUSED
    assert line.ask(b"AUTH SCRAM-SHA-256 " + first).startswith(b"+ ")
    assert line.ask(b"*").startswith(b"-ERR [AUTH]")
    assert line.read() == b""
    line.close()
