"""
The `storm` scenario: many clients connecting at the same moment, as after
a network outage or a restart, when every mail client polls at once. Counts
how many are greeted within the deadline, and how long the greeting took.

    python benchmarks/connect_storm.py --connections 3000
    python benchmarks/connect_storm.py --connections 3000 --port 1110

Without --port it starts popsrv from this checkout (`twistd -n popsrv`,
one process, with --max-connections-per-ip 0 since the whole storm comes
from one address, extra options after --server-args) and stops it at the
end;
with --port it uses a server already running on --host. (With --workers,
start the server yourself and storm it once every worker has logged
"worker ready": the parent listens before its workers serve.)

Every connection is a non-blocking socket whose connect is issued in one
tight loop before any is served; one epoll loop then reads the greetings.
Greeted connections stay open (the clients are all there at once) until
the deadline or until every connection is greeted or failed, whichever
comes first; then all are closed. Bounded: one storm, at most --deadline
seconds. The process raises its own descriptor limit (RLIMIT_NOFILE) to
its hard limit; a server started here inherits it.
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


@dataclass
class Storm:
    """
    What became of each connection of one storm.

    @ivar latencies: seconds from the storm's start to each greeting.
    @ivar failures: how many connections failed, by reason.
    @ivar waiting: connections neither greeted nor failed at the deadline.
    @ivar issued: seconds the loop of connect calls took.
    """

    connections: int
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    issued: float = 0.0

    def fail(self, reason: str) -> None:
        """
        Count one failed connection.
        """
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def summary(self, deadline: float) -> str:
        """
        One paragraph of figures.
        """
        greeted = len(self.latencies)
        lines = [f"{greeted} of {self.connections} greeted within {deadline:g} s "
                 f"(connects issued in {self.issued * 1000:.0f} ms)"]
        if greeted:
            ordered = sorted(self.latencies)

            def percentile(p: float) -> float:
                return 1000 * ordered[min(greeted - 1, int(p / 100 * greeted))]

            lines.append(
                f"greeting after: p50 {percentile(50):.0f} ms, p90 {percentile(90):.0f} ms, "
                f"p99 {percentile(99):.0f} ms, max {1000 * ordered[-1]:.0f} ms, "
                f"mean {1000 * statistics.fmean(ordered):.0f} ms"
            )
        if self.failures:
            lines.append("failed: " + ", ".join(f"{count} {reason}" for reason, count in sorted(self.failures.items())))
        if self.waiting:
            lines.append(f"still waiting at the deadline: {self.waiting}")
        return "\n".join(lines)


def raiseDescriptorLimit() -> int:
    """
    Raise this process's soft RLIMIT_NOFILE to its hard limit; return it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def storm(host: str, port: int, connections: int, deadline: float) -> Storm:
    """
    Open C{connections} connections at once and wait up to C{deadline}
    seconds (from the first connect) for their greetings.
    """
    result = Storm(connections)
    selector = selectors.EpollSelector()
    buffers: dict[socket.socket, bytes] = {}
    started = time.monotonic()
    for _ in range(connections):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            result.fail(f"connect: {errno.errorcode.get(code, code)}")
            sock.close()
            continue
        buffers[sock] = b""
        selector.register(sock, selectors.EVENT_READ)
    result.issued = time.monotonic() - started
    pending = set(buffers)
    greeted: list[socket.socket] = []
    while pending:
        left = started + deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in selector.select(min(left, 0.5)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError as error:
                result.fail(errno.errorcode.get(error.errno or 0, str(error)))
                data = None
            else:
                if not data:
                    result.fail("closed before the greeting")
            if not data:
                selector.unregister(sock)
                pending.discard(sock)
                sock.close()
                continue
            buffers[sock] += data
            if b"\r\n" not in buffers[sock]:
                continue
            selector.unregister(sock)
            pending.discard(sock)
            if buffers[sock].startswith(b"+OK"):
                result.latencies.append(time.monotonic() - started)
                greeted.append(sock)
            else:
                result.fail(f"greeting {buffers[sock][:40]!r}")
                sock.close()
    result.waiting = len(pending)
    for sock in list(pending) + greeted:
        sock.close()
    selector.close()
    return result


def main() -> None:
    """
    Run one storm and print its figures.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--deadline", type=float, default=20.0, help="seconds [default: 20]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="a running server's port (else popsrv is started here)")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                        help="further popsrv options for the server started here")
    args = parser.parse_args()
    limit = raiseDescriptorLimit()
    if args.connections + 100 > limit:
        parser.error(f"{args.connections} connections need more descriptors than the limit of {limit}")
    if args.port is not None:
        result = storm(args.host, args.port, args.connections, args.deadline)
    else:
        from servers import popsrv

        with tempfile.TemporaryDirectory(prefix="popsrv-storm-") as root:
            # Every client of the storm comes from one address: lift the
            # per-address limit, which would turn all but ten away.
            server = popsrv.start(
                os.path.join(root, "mail"), {"alice": "secret"}, "--max-connections-per-ip", "0", *args.server_args,
            )
            try:
                result = storm(args.host, server.port, args.connections, args.deadline)
            finally:
                server.stop()
    print(result.summary(args.deadline), flush=True)


if __name__ == "__main__":
    main()
