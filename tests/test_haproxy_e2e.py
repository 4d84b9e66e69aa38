"""
End-to-end tests of popsrv behind a real HAProxy (C{haproxy:} listeners, the
PROXY protocol in versions 1 and 2): the real server under twistd, in one
process and with C{--workers 2}; HAProxy started by the tests in TCP mode;
clients on real TCP from 127.0.0.x addresses.

HAProxy connects to popsrv from 127.0.0.1 whoever the client is: every
address-based decision (log lines, connection limits, penalties, the
plaintext policy) must use the client's address from the PROXY header.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import struct
import time
from typing import TYPE_CHECKING, Iterator, List

import attr
import pytest

from popsrv.store.maildir import deliver
from popsrv.wire.proxyheader import V2_SIGNATURE
from tests.support.certificates import makePKI
from tests.support.haproxy import Backend, HAProxy, findHAProxy
from tests.support.pgserver import canInstall

if TYPE_CHECKING:
    from tests.support.certificates import TestPKI
    from tests.support.servers import Launcher, Popsrv

HOST = "127.0.0.1"
SOCKET_TIMEOUT = 30.0
FULL = b"-ERR [SYS/TEMP] too many connections"
REFUSED = b"-ERR [AUTH] invalid user name or password"
PLAINTEXT_REFUSED = b"-ERR [AUTH] plaintext authentication is not allowed on this connection; use STLS first"
PER_ADDRESS = 10
VERSIONS = ["send-proxy", "send-proxy-v2"]
# popsrv's lines, in one process or relayed from a worker.
PROTOCOL = r"\[popsrv\.pop3\.protocol\.POP3Protocol#info(?: worker \d)?\] "
BAD_HEADER = r"\[popsrv\.wire\.proxied#warn(?: worker \d)?\] closed a connection from 127\.0\.0\.1:\d+: "


@pytest.fixture(scope="session")
def haproxyBinary() -> str:
    """
    The haproxy binary; the tests are skipped only where it cannot be
    installed (no Debian packages), and fail where it merely is not.
    """
    binary = findHAProxy()
    if binary is None:
        if not canInstall():
            pytest.skip("no haproxy binary, and this machine has no Debian packages to install it from")
        pytest.fail("HAProxy is not installed: run .ci/run, or apt-get install haproxy")
    return binary


@attr.s(auto_attribs=True)
class Setup:
    """
    popsrv with a plain listener, a C{haproxy:tcp:} and a C{haproxy:ssl:}
    one; HAProxy in front, a frontend per PROXY version for the first
    (named after C{send-proxy} and C{send-proxy-v2}) and one for implicit
    TLS (C{tls}, passed through with C{send-proxy-v2}).
    """

    popsrv: Popsrv
    haproxy: HAProxy
    proxied: int
    proxiedTLS: int
    pki: TestPKI

    def mark(self) -> int:
        """A position in popsrv's log, to look only after it."""
        return self.popsrv.twistd.mark()

    def waitFor(self, pattern: str, since: int) -> re.Match:
        """Wait for a line of popsrv's log (after C{since})."""
        return self.popsrv.twistd.waitFor(pattern, timeout=SOCKET_TIMEOUT, since=since)

    def linesSince(self, since: int) -> List[str]:
        """popsrv's log lines after C{since}."""
        return self.popsrv.twistd.lines[since:]


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "workers-2"])
def setup(request: pytest.FixtureRequest, moduleLauncher: Launcher, haproxyBinary: str) -> Iterator[Setup]:
    """
    popsrv behind HAProxy, in one process or with two workers.
    """
    workers = request.param
    base = moduleLauncher.base / f"haproxy-{workers}"
    pki = makePKI(base / "pki")
    extra = [
        "--listen", "haproxy:tcp:0:interface=127.0.0.1",
        "--listen", f"haproxy:ssl:0:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.chain}",
        "--tls-cert", str(pki.chain), "--tls-key", str(pki.key),
    ]
    if workers > 1:
        extra += ["--workers", str(workers)]
    popsrv = moduleLauncher.popsrv(*extra)
    _, proxied, proxiedTLS = popsrv.twistd.waitListeningPorts(3)
    for index in range(workers if workers > 1 else 0):
        popsrv.twistd.waitFor(rf"worker {index}\] worker ready", timeout=SOCKET_TIMEOUT)
    deliver(popsrv.maildir("alice"), b"Subject: hi\r\n\r\nhello\r\n")
    backends = [Backend(version, proxied, version) for version in VERSIONS]
    backends.append(Backend("tls", proxiedTLS, "send-proxy-v2"))
    haproxy = HAProxy(haproxyBinary, base / "haproxy", backends)
    try:
        yield Setup(popsrv, haproxy, proxied, proxiedTLS, pki)
    finally:
        haproxy.stop()


class Line:
    """
    A raw POP3 connection: send a line, read a line.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        # The client's own port (HAProxy passes it on in the header).
        self.port = int(sock.getsockname()[1])

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


def through(setup: Setup, version: str, source: str) -> Line:
    """A connection through HAProxy's frontend for C{version}, from C{source}, its greeting unread."""
    return Line(setup.haproxy.connect(version, source))


def closeAll(setup: Setup, lines: List[Line], source: str) -> None:
    """
    Close connections from C{source} and wait until popsrv has ended every
    one of their sessions (so their addresses' counts are back down).
    """
    since = setup.mark()
    for line in lines:
        line.close()
    for line in lines:
        setup.waitFor(rf"{PROTOCOL}session of - from {re.escape(source)}:{line.port} ended", since)


@pytest.mark.parametrize("version", VERSIONS)
def test_logged_under_the_client_address(setup: Setup, version: str) -> None:
    """
    A client at 127.0.0.5 is logged as 127.0.0.5, with its own port, in
    the connect, login and session-end lines, never as HAProxy's
    127.0.0.1 (and, both being loopback, it may send its password).
    """
    since = setup.mark()
    line = through(setup, version, "127.0.0.5")
    assert line.read().startswith(b"+OK")
    peer = rf"127\.0\.0\.5:{line.port}"
    assert line.ask(b"USER alice").startswith(b"+OK")
    assert line.ask(b"PASS secret").startswith(b"+OK alice has 1 message")
    assert line.ask(b"QUIT").startswith(b"+OK")
    assert line.read() == b""
    line.close()
    setup.waitFor(rf"{PROTOCOL}connection from {peer} \[session [-\w]+\]$", since)
    setup.waitFor(rf"{PROTOCOL}alice logged in from {peer} with USER/PASS", since)
    setup.waitFor(rf"{PROTOCOL}session of alice from {peer} ended \(quit\)", since)
    ours = [line for line in setup.linesSince(since) if re.search(PROTOCOL, line)]
    assert not [line for line in ours if "127.0.0.1" in line], ours


@pytest.mark.parametrize("version", VERSIONS)
def test_connections_are_counted_per_client_address(setup: Setup, version: str) -> None:
    """
    --max-connections-per-ip counts the client's address: the eleventh
    connection from 127.0.0.5 through HAProxy is refused, while one from
    127.0.0.6 through the same HAProxy is served.
    """
    held = [through(setup, version, "127.0.0.5") for _ in range(PER_ADDRESS)]
    try:
        assert all(line.read().startswith(b"+OK") for line in held)
        since = setup.mark()
        over = through(setup, version, "127.0.0.5")
        assert over.read() == FULL
        assert over.read() == b""
        setup.waitFor(rf"refused a connection from 127\.0\.0\.5:{over.port}: too many connections from this", since)
        over.close()
        other = through(setup, version, "127.0.0.6")
        assert other.read().startswith(b"+OK")
        assert other.ask(b"QUIT").startswith(b"+OK")
        other.close()
    finally:
        closeAll(setup, held, "127.0.0.5")


@pytest.mark.parametrize("version, guesser, owner", [
    ("send-proxy", "127.0.0.7", "127.0.0.8"), ("send-proxy-v2", "127.0.0.9", "127.0.0.10"),
])
def test_penalties_hold_per_client_address(setup: Setup, version: str, guesser: str, owner: str) -> None:
    """
    Failed logins through HAProxy penalize the guesser's own address:
    its third verdict waits, and the owner's right password from another
    address through the same HAProxy logs in at once.
    """
    since = setup.mark()
    line = through(setup, version, guesser)
    assert line.read().startswith(b"+OK")
    for _ in range(3):
        assert line.ask(b"USER alice").startswith(b"+OK")
        assert line.ask(b"PASS wrong").startswith(REFUSED)
    assert line.read() == b""
    line.close()
    setup.waitFor(rf"login from {re.escape(guesser)}:{line.port} waits [\d.]+ s \(penalty\)", since)
    begun = time.monotonic()
    client = through(setup, version, owner)
    assert client.read().startswith(b"+OK")
    assert client.ask(b"USER alice").startswith(b"+OK")
    assert client.ask(b"PASS secret").startswith(b"+OK alice has")
    elapsed = time.monotonic() - begun
    assert client.ask(b"QUIT").startswith(b"+OK")
    client.close()
    assert elapsed < 1.0, elapsed
    penalties = [line for line in setup.linesSince(since) if "(penalty)" in line]
    assert penalties and all(f"from {guesser}:" in line for line in penalties), penalties


def v2Header(source: str, port: int) -> bytes:
    """A hand-written PROXY v2 header (TCP over IPv4) from C{source}:C{port} to 127.0.0.1:110."""
    addresses = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(HOST).packed
    addresses += struct.pack("!HH", port, 110)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 110\r\n", v2Header("192.0.2.7", 5555),
], ids=["v1", "v2"])
def test_plaintext_policy_uses_the_header_address(setup: Setup, header: bytes) -> None:
    """
    A client the PROXY header places at 192.0.2.7 is not on loopback,
    though the connection comes from 127.0.0.1: under the default
    tls-only policy USER is refused with the advice to use STLS, CAPA
    offers no USER, and the log names 192.0.2.7. The same header from
    127.0.0.9 may send its password.
    """
    since = setup.mark()
    sock = socket.create_connection((HOST, setup.proxied), timeout=SOCKET_TIMEOUT)
    sock.sendall(header)
    line = Line(sock)
    assert line.read().startswith(b"+OK")
    assert line.ask(b"USER alice") == PLAINTEXT_REFUSED
    line.send(b"CAPA")
    capabilities = []
    while (reply := line.read()) != b".":
        capabilities.append(reply)
    assert b"STLS" in capabilities and b"USER" not in capabilities
    assert line.ask(b"QUIT").startswith(b"+OK")
    line.close()
    setup.waitFor(rf"{PROTOCOL}connection from 192\.0\.2\.7:5555 \[session [-\w]+\]$", since)
    setup.waitFor(rf"{PROTOCOL}session of - from 192\.0\.2\.7:5555 ended \(quit\)", since)

    local = header.replace(b"192.0.2.7", b"127.0.0.9") if header.startswith(b"PROXY") else v2Header("127.0.0.9", 5555)
    sock = socket.create_connection((HOST, setup.proxied), timeout=SOCKET_TIMEOUT)
    sock.sendall(local)
    line = Line(sock)
    assert line.read().startswith(b"+OK")
    assert line.ask(b"USER alice").startswith(b"+OK")
    assert line.ask(b"QUIT").startswith(b"+OK")
    line.close()


def test_implicit_tls_through_haproxy(setup: Setup) -> None:
    """
    HAProxy passes a client's TLS through to a haproxy:ssl: listener with
    the PROXY header before it, in the clear: the client logs in over TLS,
    logged under its own address.
    """
    since = setup.mark()
    sock = setup.haproxy.connect("tls", "127.0.0.5")
    port = sock.getsockname()[1]
    context = ssl.create_default_context(cafile=str(setup.pki.ca))
    line = Line(context.wrap_socket(sock, server_hostname="localhost"))
    assert line.read().startswith(b"+OK")
    assert line.ask(b"USER alice").startswith(b"+OK")
    assert line.ask(b"PASS secret").startswith(b"+OK alice has 1 message")
    assert line.ask(b"QUIT").startswith(b"+OK")
    line.close()
    setup.waitFor(rf"{PROTOCOL}alice logged in from 127\.0\.0\.5:{port} with USER/PASS", since)


def closedUnheard(sock: socket.socket) -> bytes:
    """
    Read until the server closes (a reset counts as closed); return what it
    sent.
    """
    received = b""
    try:
        while data := sock.recv(4096):
            received += data
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


@pytest.mark.parametrize("data, why", [
    (b"\x00\xff garbage \x16\x03\x01\r\n", "no PROXY header"),
    (b"PROXY TCP4 " + b"1" * 150 + b"\r\n", "PROXY header line longer than 107 octets"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 555x 110\r\nUSER alice\r\n", "PROXY header with an invalid port"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x7f\x00\x00\x01" + b"USER alice\r\n",
     "PROXY header of 4 octets, too short for its 12 octets of addresses"),
    (b"USER alice\r\nPASS secret\r\nLIST\r\n", "no PROXY header"),
], ids=["garbage", "long-v1-line", "bad-v1-port", "bad-v2-length", "pop3-without-header"])
def test_malformed_headers_are_closed_unheard(setup: Setup, data: bytes, why: str) -> None:
    """
    A connection to a haproxy: listener that does not start with a valid
    PROXY header is closed without a greeting and without a traceback;
    the operator's log says why, and serving goes on.
    """
    since = setup.mark()
    sock = socket.create_connection((HOST, setup.proxied), timeout=SOCKET_TIMEOUT)
    sock.sendall(data)
    assert closedUnheard(sock) == b""
    setup.waitFor(f"{BAD_HEADER}{re.escape(why)}$", since)
    line = through(setup, "send-proxy-v2", "127.0.0.11")
    assert line.read().startswith(b"+OK")
    assert line.ask(b"QUIT").startswith(b"+OK")
    line.close()
    setup.waitFor(rf"{PROTOCOL}session of - from 127\.0\.0\.11:{line.port} ended", since)
    lines = setup.linesSince(since)
    assert not [line for line in lines if "Traceback" in line or "Unhandled" in line], lines


def test_a_header_in_pieces_is_read(setup: Setup) -> None:
    """
    A header sent in several pieces (as a slow network may deliver it) is
    read as a whole, and the session starts only then.
    """
    since = setup.mark()
    sock = socket.create_connection((HOST, setup.proxied), timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = b"PROXY TCP4 192.0.2.9 127.0.0.1 6666 110\r\n"
    sock.sendall(header[:3])
    sock.sendall(header[3:20])
    sock.sendall(header[20:])
    line = Line(sock)
    assert line.read().startswith(b"+OK")
    assert line.ask(b"QUIT").startswith(b"+OK")
    line.close()
    setup.waitFor(rf"{PROTOCOL}connection from 192\.0\.2\.9:6666 \[session [-\w]+\]$", since)
