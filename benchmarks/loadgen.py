"""
A POP3 load generator: many concurrent short sessions from one process.

Each session is what a mail client does on a poll: connect, greeting, USER,
PASS, STAT, LIST, UIDL, RETR of every message, QUIT. The client is an
asyncio Protocol (callbacks, no streams: streams cost several times more
per round trip), which checks every reply's status and waits for the end of
multi-line replies by looking only at the end of the buffer.

A canned server answers the same dialogue from memory without parsing
anything: running the generator against it measures the generator's own
ceiling, which every result must be compared with.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Optional

__all__ = ["Result", "cannedServer", "run"]

_MULTILINE = (b"LIST", b"UIDL", b"RETR")


class _Session(asyncio.Protocol):
    """
    One client session, driven by the replies it receives.
    """

    def __init__(self, user: int, messages: int, done: asyncio.Future) -> None:
        self._commands = [b"USER user%d\r\n" % user, b"PASS pw%d\r\n" % user, b"STAT\r\n", b"LIST\r\n", b"UIDL\r\n"]
        self._commands += [b"RETR %d\r\n" % n for n in range(1, messages + 1)]
        self._commands.append(b"QUIT\r\n")
        self._next = -1  # the greeting comes first
        self._buffer = bytearray()
        self._done = done
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        command = self._commands[self._next] if self._next >= 0 else b""
        if command[:4] in _MULTILINE:
            if not buffer.endswith(b"\r\n.\r\n"):
                return
        elif not buffer.endswith(b"\r\n"):
            return
        if not buffer.startswith(b"+OK"):
            self._fail(f"{command!r} got {bytes(buffer[:80])!r}")
            return
        buffer.clear()
        self._next += 1
        if self._next == len(self._commands):
            self.transport.close()
            return
        self.transport.write(self._commands[self._next])

    def connection_lost(self, exc) -> None:
        if not self._done.done():
            if self._next == len(self._commands):
                self._done.set_result(None)
            else:
                self._done.set_exception(RuntimeError(f"connection lost after {self._next} commands: {exc}"))

    def _fail(self, why: str) -> None:
        if not self._done.done():
            self._done.set_exception(RuntimeError(why))
        self.transport.close()


class Result:
    """
    Durations of the sessions of one run, and the run's wall time.
    """

    def __init__(self, durations: list[float], wall: float) -> None:
        self.durations = sorted(durations)
        self.wall = wall

    @property
    def sessions(self) -> int:
        return len(self.durations)

    @property
    def rate(self) -> float:
        """
        Sessions per second.
        """
        return len(self.durations) / self.wall

    def percentile(self, p: float) -> float:
        """
        A latency percentile, in milliseconds.
        """
        if p == 50:
            return 1000 * statistics.median(self.durations)
        return 1000 * self.durations[min(len(self.durations) - 1, int(len(self.durations) * p / 100))]


async def _session(loop, port: int, user: int, messages: int) -> float:
    started = time.perf_counter()
    done = loop.create_future()
    await loop.create_connection(lambda: _Session(user, messages, done), "127.0.0.1", port)
    await done
    return time.perf_counter() - started


async def run(port: int, concurrency: int, users: int, messages: int, seconds: float, maxSessions: int) -> Result:
    """
    Run sessions from C{concurrency} clients against C{port} for C{seconds}
    or C{maxSessions} sessions, whichever comes first; users are taken
    round-robin so that concurrent sessions do not share a maildrop.
    """
    loop = asyncio.get_running_loop()
    durations: list[float] = []
    counter = iter(range(maxSessions))
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        for n in counter:
            if time.perf_counter() > deadline:
                return
            durations.append(await _session(loop, port, n % users, messages))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Result(durations, time.perf_counter() - started)


async def cannedServer(messages: int, size: int) -> asyncio.AbstractServer:
    """
    Start a server that answers the benchmark dialogue from memory without
    parsing, to measure the generator's ceiling.
    """
    message = (b"x" * 62 + b"\r\n") * (size // 64)
    listing = b"+OK\r\n" + b"".join(b"%d %d\r\n" % (n, len(message)) for n in range(1, messages + 1)) + b".\r\n"
    retr = b"+OK\r\n" + message + b".\r\n"

    class Canned(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            transport.write(b"+OK ready\r\n")

        def data_received(self, data: bytes) -> None:
            for line in data.split(b"\r\n")[:-1]:
                verb = line[:4].upper()
                if verb in (b"LIST", b"UIDL"):
                    self.transport.write(listing)
                elif verb == b"RETR":
                    self.transport.write(retr)
                elif verb == b"QUIT":
                    self.transport.write(b"+OK bye\r\n")
                    self.transport.close()
                else:
                    self.transport.write(b"+OK\r\n")

    return await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", 0)
