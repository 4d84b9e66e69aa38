"""
Tests of the listen backlog popsrv gives TCP listeners (L{popsrv.app.listening}):
the descriptions, the ports makeService and the worker pool bind, and a real
server greeting hundreds of clients that connect at the same moment.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from popsrv.app.listening import DEFAULT_BACKLOG, tcpArgument, withDefaultBacklog
from popsrv.app.options import MAX_BACKLOG, Options
from popsrv.app.service import makeService
from tests.support.servers import HOST, Launcher


@pytest.mark.parametrize("description, expected", [
    ("tcp:1110", "tcp:1110:backlog=4096"),
    ("tcp:1110:interface=127.0.0.1", "tcp:1110:interface=127.0.0.1:backlog=4096"),
    ("tcp:port=1110", "tcp:port=1110:backlog=4096"),
    (r"tcp6:110:interface=\:\:1", r"tcp6:110:interface=\:\:1:backlog=4096"),
    ("TCP6:110", "TCP6:110:backlog=4096"),
    ("ssl:995:privateKey=k.pem:certKey=c.pem", "ssl:995:privateKey=k.pem:certKey=c.pem:backlog=4096"),
    ("haproxy:tcp:110", "haproxy:tcp:110:backlog=4096"),
    ("haproxy:ssl:995:privateKey=k.pem", "haproxy:ssl:995:privateKey=k.pem:backlog=4096"),
    # An escaped = is part of a value, not a name.
    (r"tcp:interface=a\=b:1110", r"tcp:interface=a\=b:1110:backlog=4096"),
])
def test_tcpListenersGetTheDefaultBacklog(description: str, expected: str) -> None:
    """
    A TCP listener (tcp:, tcp6:, ssl:, also behind haproxy:) that does not
    set its backlog gets the default.
    """
    assert DEFAULT_BACKLOG == 4096
    assert withDefaultBacklog(description) == expected


@pytest.mark.parametrize("description", [
    "tcp:1110:backlog=2048",
    "haproxy:tcp:110:backlog=16",
    "tcp:1110:127.0.0.1:64",  # port, interface, backlog
    "tcp6:110:64",  # port, backlog
    "ssl:995:k.pem:c.pem:SSLv23_METHOD:127.0.0.1:64",  # ... interface, backlog
    "unix:/run/popsrv.sock",
    "haproxy:unix:/run/popsrv.sock",
    "systemd:domain=INET:index=0",
    r"tcp\:1110",
])
def test_otherDescriptionsAreKept(description: str) -> None:
    """
    A backlog given by name or by position is kept, and listeners other
    than TCP's are left as they are.
    """
    assert withDefaultBacklog(description) == description


def _escaped(value: str) -> str:
    """
    A positional value as a description writes it: colons, backslashes
    and equals signs escaped.
    """
    return quoteStringArgument(value).replace("=", "\\=")


@st.composite
def _tcpDescriptions(draw: st.DrawFn) -> tuple[str, str | None]:
    """
    A tcp: or tcp6: description (maybe behind haproxy:) with its arguments
    by name or by position in any order, an interface full of colons,
    backslashes and equals signs, and maybe a backlog; and that backlog.
    """
    kind = draw(st.sampled_from(["tcp", "tcp6", "TCP6"]))
    # Positional order: tcp:PORT:INTERFACE:BACKLOG, tcp6:PORT:BACKLOG
    # (its interface only by name).
    names = ["port", "interface", "backlog"] if kind == "tcp" else ["port", "backlog"]
    byNameOnly = [] if kind == "tcp" else ["interface"]
    values = {
        "port": str(draw(st.integers(0, 65535))),
        "interface": draw(st.text(alphabet="a1.:=\\", max_size=8)),
        "backlog": draw(st.one_of(st.none(), st.integers(0, 100000).map(str))),
    }
    if values["backlog"] is None:
        names.remove("backlog")
    count = draw(st.integers(0, len(names)))
    fields = [_escaped(values[name]) for name in names[:count]]
    for name in names[count:] + byNameOnly:
        fields.insert(draw(st.integers(0, len(fields))), f"{name}={quoteStringArgument(values[name])}")
    prefix = draw(st.sampled_from(["", "haproxy:", "HAPROXY:haproxy:"]))
    return prefix + ":".join([kind, *fields]), values["backlog"]


def _listenedWith(description: str) -> tuple[int, int, str]:
    """
    The port, backlog and interface with which Twisted's endpoint of a
    description listens.
    """
    reactor = MemoryReactorClock()
    serverFromString(reactor, description).listen(Factory())
    [(port, _, backlog, interface)] = reactor.tcpServers
    return port, backlog, interface


@given(_tcpDescriptions())
def test_theDefaultBacklogChangesNothingElse(drawn: tuple[str, str | None]) -> None:
    """
    Whatever the escapes and the order of its arguments, a description
    with the default backlog added listens on the same port and interface
    as the description itself, with its own backlog if it gives one.
    """
    description, backlog = drawn
    try:
        port, given, interface = _listenedWith(description)
    except (TypeError, ValueError):
        assume(False)  # Not a description Twisted takes (say, a positional after its name).
    assert _listenedWith(withDefaultBacklog(description)) == (
        port, DEFAULT_BACKLOG if backlog is None else given, interface,
    )


@pytest.mark.parametrize("description, port, backlog", [
    ("tcp:1110", "1110", None),
    ("tcp:port=1110:backlog=64", "1110", "64"),
    ("tcp:1110:127.0.0.1:64", "1110", "64"),
    (r"tcp6:interface=\:\:1:port=1110", "1110", None),
    (r"tcp6:interface=\:\:1:1110:64", "1110", "64"),
    ("HAPROXY:haproxy:ssl:995:k.pem:c.pem:SSLv23_METHOD:127.0.0.1:64", "995", "64"),
    ("unix:/run/popsrv.sock:backlog=64", None, None),
    ("systemd:domain=INET:index=0", None, None),
])
def test_tcpArgumentsByNameOrPosition(description: str, port: str | None, backlog: str | None) -> None:
    """
    The port and the backlog of a TCP listener are found by name or by
    position, past escaped colons and haproxy: in any case; other
    listeners have none.
    """
    assert (tcpArgument(description, "port"), tcpArgument(description, "backlog")) == (port, backlog)


@pytest.mark.parametrize("description", [
    "tcp:0:backlog=99999999999999999999",
    f"tcp:0:backlog={MAX_BACKLOG + 1}",
    "tcp:0:backlog=-1",
    "tcp:0:127.0.0.1:99999999999999999999",
    "haproxy:tcp6:0:99999999999999999999",
])
def test_aBacklogASocketCannotTakeIsAUsageError(description: str) -> None:
    """
    A backlog below 0 or beyond what listen() takes (a C int) stops the
    start with one line, not a traceback when the port is bound.
    """
    with pytest.raises(usage.UsageError, match=r"backlog -?\d+ is not between 0 and 2147483647$"):
        Options().parseOptions(["--auth", "memory:a:b", "--listen", description])


@pytest.mark.parametrize("description", ["tcp:0:backlog=0", f"tcp:0:backlog={MAX_BACKLOG}"])
def test_theLimitsOfTheBacklogAreAccepted(tmp_path, description: str) -> None:
    """
    0 and the largest C int are backlogs listen() takes.
    """
    options = Options()
    options.parseOptions([
        "--auth", "memory:a:b", "--maildir-root", str(tmp_path), "--secret-file", str(tmp_path / "secret"),
        "--listen", description,
    ])
    assert options["listen"] == [description]


@pytest.mark.parametrize("description", [
    r"tcp6:interface=\:\:1:port=99999",
    "HAPROXY:tcp:99999",
])
def test_thePortIsCheckedPastEscapesAndCase(description: str) -> None:
    """
    The port of a description with escaped colons, or behind HAPROXY:, is
    checked too.
    """
    with pytest.raises(usage.UsageError, match=r"port 99999 is not between 0 and 65535$"):
        Options().parseOptions(["--auth", "memory:a:b", "--listen", description])


def test_makeServiceListensWithTheDefaultBacklog(tmp_path) -> None:
    """
    The ports makeService binds have the default backlog unless their
    description sets one; UNIX listeners keep Twisted's.
    """
    from tests.support.certificates import makePKI

    pki = makePKI(tmp_path / "pki")
    options = Options()
    options.parseOptions([
        "--auth", "memory:a:b", "--maildir-root", str(tmp_path),
        "--listen", "tcp:1110:interface=127.0.0.1", "--listen", "tcp:1111:backlog=2048",
        "--listen", "haproxy:tcp:1112", "--listen", f"ssl:1995:privateKey={pki.key}:certKey={pki.chain}",
        "--listen", f"unix:{tmp_path / 'popsrv.sock'}",
    ])
    reactor = MemoryReactorClock()
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    assert [(port, backlog) for port, _, backlog, _ in reactor.tcpServers] == [
        (1110, DEFAULT_BACKLOG), (1111, 2048), (1112, DEFAULT_BACKLOG),
    ]
    assert [(port, backlog) for port, _, _, backlog, _ in reactor.sslServers] == [(1995, DEFAULT_BACKLOG)]
    assert [backlog for _, _, backlog, _, _ in reactor.unixServers] == [50]
    service.stopService()


def test_theWorkerPoolBindsWithTheDefaultBacklog() -> None:
    """
    With --workers, the parent binds the sockets the workers share with
    the default backlog, or the one the description sets.
    """
    from popsrv.app.workers import WorkerPool

    class Port:
        def __init__(self, port: int) -> None:
            self.port = port

        def stopReading(self) -> None:
            pass

        def getHost(self) -> object:
            return self

    class Reactor(MemoryReactorClock):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            super().listenTCP(port, factory, backlog, interface)
            return Port(port)

    reactor = Reactor()
    pool = WorkerPool(reactor, ["tcp:1110", "tcp:1111:backlog=128"], [], 2)
    pool.privilegedStartService()
    assert [(port, backlog) for port, _, backlog, _ in reactor.tcpServers] == [(1110, DEFAULT_BACKLOG), (1111, 128)]


def unwrap(factory: object) -> list[str]:
    """
    The layers of a listening factory, outermost first, by class name.
    """
    layers = []
    while factory is not None:
        layers.append(type(factory).__name__)
        factory = getattr(factory, "wrappedFactory", None)
    return layers


def test_haproxyListenersReadTheHeaderBeneathTLS(tmp_path) -> None:
    """
    Behind haproxy:, popsrv's own PROXY layer wraps the server's factory,
    in any case of the prefix; for ssl:, the header is read beneath TLS
    (HAProxy sends it in the clear, before the client's handshake), so
    the port is a TCP one.
    """
    from popsrv.app.listening import serverEndpoint
    from tests.support.certificates import makePKI

    pki = makePKI(tmp_path / "pki")
    reactor = MemoryReactorClock()
    factory = Factory()
    for description in (
        "haproxy:tcp:1110", "HAProxy:tcp6:1111", "h\\aproxy:tcp:1112",
        f"haproxy:ssl:1995:privateKey={pki.key}:certKey={pki.chain}",
        "haproxy:haproxy:tcp:1113", "tcp:1114",
    ):
        serverEndpoint(reactor, description).listen(factory)
    assert reactor.sslServers == []
    assert [(port, unwrap(wrapped), backlog) for port, wrapped, backlog, _ in reactor.tcpServers] == [
        (1110, ["ProxiedFactory", "Factory"], DEFAULT_BACKLOG),
        (1111, ["ProxiedFactory", "Factory"], DEFAULT_BACKLOG),
        (1112, ["ProxiedFactory", "Factory"], DEFAULT_BACKLOG),
        (1995, ["ProxiedFactory", "TLSMemoryBIOFactory", "Factory"], DEFAULT_BACKLOG),
        (1113, ["ProxiedFactory", "ProxiedFactory", "Factory"], DEFAULT_BACKLOG),
        (1114, ["Factory"], DEFAULT_BACKLOG),
    ]
    serverEndpoint(reactor, f"haproxy:unix:{tmp_path / 'popsrv.sock'}").listen(factory)
    assert unwrap(reactor.unixServers[0][1]) == ["ProxiedFactory", "Factory"]


def test_workersAdoptHaproxyListenersAsOneProcessListens(tmp_path) -> None:
    """
    A worker adopting an inherited socket for a haproxy: listener wraps it
    as one process does: the PROXY layer outermost, beneath TLS for ssl:.
    """
    import os

    from popsrv.app.worker import adoptingEndpoint
    from tests.support.certificates import makePKI

    pki = makePKI(tmp_path / "pki")
    reactor = MemoryReactorClock()
    for description in ("haproxy:tcp:0", f"haproxy:ssl:0:privateKey={pki.key}:certKey={pki.chain}"):
        adoptingEndpoint(reactor, description, os.dup(0), socket.AF_INET).listen(Factory())
    assert [unwrap(factory) for _, _, factory in reactor.adoptedPorts] == [
        ["ProxiedFactory", "Factory"], ["ProxiedFactory", "TLSMemoryBIOFactory", "Factory"],
    ]


CLIENTS = 300
DEADLINE = 10.0


@pytest.mark.parametrize("workers", [1, 2])
def test_hundredsOfClientsConnectingAtOnceAreAllGreeted(launcher: Launcher, workers: int) -> None:
    """
    300 clients that connect at the same moment are all greeted, quickly:
    none is left waiting on a full listen queue, in one process or with
    workers sharing the socket.
    """
    server = launcher.popsrv("--max-connections-per-ip", "0", "--workers", str(workers))
    for index in range(workers if workers > 1 else 0):
        server.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytes] = {}
    greeted = 0
    started = time.monotonic()
    try:
        for _ in range(CLIENTS):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setblocking(False)
            assert client.connect_ex((HOST, server.port)) in (0, errno.EINPROGRESS)
            received[client] = b""
            selector.register(client, selectors.EVENT_READ)
        while greeted < CLIENTS:
            left = started + DEADLINE - time.monotonic()
            assert left > 0, f"{greeted} of {CLIENTS} clients greeted within {DEADLINE} s"
            for key, _ in selector.select(left):
                client = key.fileobj
                data = client.recv(1024)
                assert data, "a connection was closed before its greeting"
                received[client] += data
                if received[client].endswith(b"\r\n"):
                    assert received[client].startswith(b"+OK ")
                    selector.unregister(client)
                    greeted += 1
    finally:
        selector.close()
        for client in received:
            client.close()
