"""
The `idle` scenario: many authenticated sessions that stay idle, as mail
clients that keep a connection open. Measures the server's memory per idle
session and how much they slow down one more, active client.

    python benchmarks/idle.py --sessions 2000 --servers popsrv twisted-nodelay dovecot

Each idle session is a different user (a maildrop is locked by its
session). Bounded: the idle sessions are opened once, the probe runs a fixed
number of sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import loadgen  # noqa: E402
from fixtures import benchmarkMessage  # noqa: E402
from harness import SERVERS, eachServer  # noqa: E402

# Sessions timed for each median (one takes about 2 ms).
PROBES = 200


async def openIdle(port: int, users: list[int], parallel: int = 50) -> list[asyncio.StreamWriter]:
    """
    Log in as each user and keep the connections open.
    """
    writers = []
    semaphore = asyncio.Semaphore(parallel)

    async def one(user: int) -> None:
        async with semaphore:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()
            writer.write(b"USER idle%d\r\nPASS pw\r\n" % user)
            for _ in range(2):
                line = await reader.readline()
                if not line.startswith(b"+OK"):
                    raise RuntimeError(f"idle login failed: {line!r}")
            writers.append(writer)

    await asyncio.gather(*(one(user) for user in users))
    return writers


async def probe(port: int, count: int) -> float:
    """
    The median duration of C{count} sessions of the probe user, in ms.
    """
    durations = []
    for _ in range(count):
        result = await loadgen.run(port, 1, 1, 1, 60, 1)
        durations.extend(result.durations)
    return 1000 * statistics.median(durations)


def prepare(root: str, sessions: int) -> dict[str, str]:
    """
    One probe user (user0, as the load generator names it) and the idle
    users, each with one small message.
    """
    message = benchmarkMessage(2048)
    users = {"user0": "pw0"}
    names = ["user0"] + [f"idle{n}" for n in range(sessions)]
    for name in names:
        users.setdefault(name, "pw")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, name, sub))
        with open(os.path.join(root, name, "new", f"1700000000.M000001P1.{name}"), "wb") as f:
            f.write(message)
    return users


async def scenario(server, sessions: int) -> str:
    quiet = await probe(server.port, PROBES)
    before = server.rssKilobytes()
    started = time.perf_counter()
    writers = await openIdle(server.port, list(range(sessions)))
    opened = time.perf_counter() - started
    after = server.rssKilobytes()
    busy = await probe(server.port, PROBES)
    for writer in writers:
        writer.close()
    return (f"{sessions} idle sessions opened in {opened:.1f} s; {(after - before) / sessions:.1f} KB each; "
            f"a new session takes {busy:.2f} ms (median) against {quiet:.2f} ms without them "
            f"({100 * (busy / quiet - 1):+.0f} %)")


def main(args) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.sessions + 1000)), hard))
    for server in eachServer(args.servers, lambda root: prepare(root, args.sessions)):
        print(f"- {server.name}: {asyncio.run(scenario(server, args.sessions))}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    main(parser.parse_args())
