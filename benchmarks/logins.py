"""
The `logins` scenario: what one login costs per password scheme, and whether
a flood of slow-hash logins holds up other sessions.

    python benchmarks/logins.py --logins 40 --flood-clients 32 --flood-seconds 8

1. Cost per scheme: a real `twistd popsrv --auth passwd-file:FILE` with one
   user per scheme; one client logs in and out (connect, USER, PASS, QUIT;
   AUTH SCRAM-SHA-256 with scramp for the SCRAM rows) `--logins` times per
   scheme, one at a time. Reported: the median and p90 session time seen by
   the client and the server's CPU per login (all its threads).

2. Flood: `--flood-clients` clients log in as the Argon2id user over and
   over for `--flood-seconds`, while two probes run: a session that logged
   in before the flood and sends STAT every 50 ms, and whole sessions of a
   PLAIN user (connect, login, STAT, QUIT) one after the other. Their
   latencies with and without the flood are compared.

Bounded: a fixed number of logins per scheme and a fixed flood duration.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import scramp  # noqa: E402
from servers import popsrv as popsrvServer  # noqa: E402

from popsrv.auth import schemes  # noqa: E402
from popsrv.auth.checkers import DEFAULT_CONCURRENCY  # noqa: E402
from popsrv.store.maildir import deliver  # noqa: E402

PASSWORD = "correct horse battery staple"
SCHEMES = ["PLAIN", "SHA256-CRYPT", "SHA512-CRYPT", "SCRAM-SHA-256", "BLF-CRYPT", "ARGON2ID"]


def userOf(scheme: str) -> str:
    return scheme.lower().replace("-", "")


class Client:
    """
    A minimal POP3 client on asyncio streams.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        await client.line()
        return client

    async def line(self) -> bytes:
        return await self.reader.readline()

    async def command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.line()

    async def login(self, user: str, password: str = PASSWORD) -> bool:
        await self.command(b"USER " + user.encode())
        return (await self.command(b"PASS " + password.encode())).startswith(b"+OK")

    async def scramLogin(self, user: str, password: str = PASSWORD) -> bool:
        scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        first = base64.b64encode(scram.get_client_first().encode())
        reply = await self.command(b"AUTH SCRAM-SHA-256 " + first)
        scram.set_server_first(base64.b64decode(reply[2:].strip()).decode())
        reply = await self.command(base64.b64encode(scram.get_client_final().encode()))
        if not reply.startswith(b"+ "):
            return False
        scram.set_server_final(base64.b64decode(reply[2:].strip()).decode())
        return (await self.command(b"")).startswith(b"+OK")

    async def quit(self) -> None:
        await self.command(b"QUIT")
        self.writer.close()


async def oneLogin(port: int, user: str, scram: bool) -> float:
    """
    One session: connect, log in, QUIT; return its duration in ms.
    """
    started = time.perf_counter()
    client = await Client.connect(port)
    ok = await (client.scramLogin(user) if scram else client.login(user))
    if not ok:
        raise RuntimeError(f"login of {user} failed")
    await client.quit()
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def costPerScheme(server, count: int) -> list[tuple]:
    rows = []
    cases = [(scheme, userOf(scheme), False) for scheme in SCHEMES]
    cases.insert(4, ("SCRAM-SHA-256 via AUTH SCRAM-SHA-256", userOf("SCRAM-SHA-256"), True))
    cases.insert(1, ("PLAIN via AUTH SCRAM-SHA-256", userOf("PLAIN"), True))
    for label, user, scram in cases:
        await oneLogin(server.port, user, scram)
        cpu = server.cpuSeconds()
        durations = [await oneLogin(server.port, user, scram) for _ in range(count)]
        cpuPerLogin = (server.cpuSeconds() - cpu) * 1000 / count
        rows.append((label, statistics.median(durations), percentile(durations, 0.9), cpuPerLogin))
    return rows


async def probes(port: int, seconds: float, flood) -> dict:
    """
    Run the two probes for C{seconds}, with C{flood} (a coroutine function
    taking a deadline) beside them, or none.
    """
    idle = await Client.connect(port)
    assert await idle.login(userOf("PLAIN") + "2")
    deadline = time.monotonic() + seconds
    stat: list[float] = []
    sessions: list[float] = []
    floodCount: list[int] = [0]

    async def statProbe():
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await idle.command(b"STAT")
            stat.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)

    async def sessionProbe():
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client = await Client.connect(port)
            assert await client.login(userOf("PLAIN"))
            await client.command(b"STAT")
            await client.quit()
            sessions.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)

    tasks = [statProbe(), sessionProbe()]
    if flood is not None:
        tasks.append(flood(deadline, floodCount))
    await asyncio.gather(*tasks)
    await idle.quit()
    return {"stat": stat, "sessions": sessions, "flood": floodCount[0]}


def makeFlood(port: int, clients: int):
    async def flood(deadline: float, count: list) -> None:
        async def one():
            while time.monotonic() < deadline:
                await oneLogin(port, userOf("ARGON2ID"), False)
                count[0] += 1

        await asyncio.gather(*(one() for _ in range(clients)))

    return flood


def describe(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} | {percentile(values, 0.99):.1f} | {max(values):.1f}"


async def run(arguments) -> None:
    with tempfile.TemporaryDirectory(prefix="popsrv-logins-") as root:
        users = {userOf(scheme): schemes.hashPassword(PASSWORD, scheme) for scheme in SCHEMES}
        users[userOf("PLAIN") + "2"] = schemes.hashPassword(PASSWORD, "PLAIN")
        for user in users:
            deliver(os.path.join(root, user), b"Subject: hello\r\n\r\nhello\r\n")
        server = popsrvServer.start(root, users, authType="passwd-file")
        try:
            print(f"machine: {os.cpu_count()} cores; popsrv checks at most {DEFAULT_CONCURRENCY} slow hashes at once\n")
            print("| scheme | logins | p50 ms | p90 ms | server CPU ms/login |")
            print("|---|---|---|---|---|")
            for label, p50, p90, cpu in await costPerScheme(server, arguments.logins):
                print(f"| {label} | {arguments.logins} | {p50:.1f} | {p90:.1f} | {cpu:.1f} |")
            quiet = await probes(server.port, arguments.flood_seconds, None)
            cpu = server.cpuSeconds()
            loaded = await probes(server.port, arguments.flood_seconds, makeFlood(server.port, arguments.flood_clients))
            floodCPU = server.cpuSeconds() - cpu
            print(f"\nflood: {arguments.flood_clients} clients logging in as the ARGON2ID user for "
                  f"{arguments.flood_seconds:.0f} s: {loaded['flood']} logins "
                  f"({loaded['flood'] / arguments.flood_seconds:.1f}/s), server CPU {floodCPU:.1f} s\n")
            print("| probe | flood | samples | p50 ms | p99 ms | max ms |")
            print("|---|---|---|---|---|---|")
            for name, key in (("STAT in a logged-in session", "stat"), ("PLAIN user's whole session", "sessions")):
                print(f"| {name} | no | {len(quiet[key])} | {describe(quiet[key])} |")
                print(f"| {name} | yes | {len(loaded[key])} | {describe(loaded[key])} |")
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=40, help="logins per scheme [40]")
    parser.add_argument("--flood-clients", type=int, default=32, help="clients in the flood [32]")
    parser.add_argument("--flood-seconds", type=float, default=8.0, help="duration of the flood [8]")
    arguments = parser.parse_args()
    if not (1 <= arguments.logins <= 1000 and 1 <= arguments.flood_clients <= 200
            and 1 <= arguments.flood_seconds <= 60):
        parser.error("bounded: --logins 1..1000, --flood-clients 1..200, --flood-seconds 1..60")
    asyncio.run(run(arguments))


if __name__ == "__main__":
    main()
