"""
The `sessions` scenario: short POP3 sessions against popsrv, Twisted's own
twisted.mail.pop3 and Dovecot, side by side in one run.

One session = connect, greeting, USER, PASS, STAT, LIST, UIDL, RETR of every
message (20 x 4 KB by default), QUIT, over 200 users taken round-robin (no
lock contention). Every server gets its own copy of the same Maildirs,
delivered to new/, and one warm-up pass (the first logins move new mail to
cur/). For each concurrency level the table gives sessions per second,
session latency (p50, p99), the server's CPU time per session (all its
processes) and its memory.

The load generator's ceiling is measured first, against a canned server in
a process of its own that answers the same dialogue from memory: a server's
sessions/s means something only well below that ceiling.

    python benchmarks/sessions.py --servers popsrv twisted dovecot --concurrency 1 16 64 --seconds 5

Dovecot is installed from Debian's packages when missing (as root), and
skipped with a note when it cannot be. Every level is bounded by --seconds
and --max-sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import loadgen  # noqa: E402
from fixtures import makeMaildirs  # noqa: E402
from harness import SERVERS, eachServer  # noqa: E402


def cannedCeiling(args) -> dict[int, loadgen.Result]:
    """
    The generator's results against a canned server in another process.
    """
    process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "canned.py"), str(args.messages), str(args.size)],
        stdout=subprocess.PIPE,
    )
    try:
        port = int(process.stdout.readline())
        return {c: asyncio.run(loadgen.run(port, c, args.users, args.messages, args.seconds, args.max_sessions))
                for c in args.concurrency}
    finally:
        process.terminate()
        process.wait(10)


def row(name: str, concurrency: int, result: loadgen.Result, cpu, rss, reference) -> str:
    """
    One line of the results table.
    """
    cpuText = "-" if cpu is None else f"{1000 * cpu / result.sessions:.2f}"
    rssText = "-" if rss is None else f"{rss / 1024:.0f}"
    ratio = "-" if reference is None else f"{reference.rate / result.rate:.2f}"
    return (f"| {name} | {concurrency} | {result.sessions} | {result.rate:.0f} | {result.percentile(50):.2f} | "
            f"{result.percentile(99):.2f} | {cpuText} | {rssText} | {ratio} |")


def main(args) -> None:
    print("| server | clients | sessions | sessions/s | p50 ms | p99 ms | server CPU ms/session | RSS MB |"
          " popsrv's rate / this |")
    print("|---|---|---|---|---|---|---|---|---|")
    for concurrency, result in cannedCeiling(args).items():
        print(row("canned (generator ceiling)", concurrency, result, None, None, None), flush=True)
    fixture = tempfile.mkdtemp(prefix="popsrv-sessions-")
    popsrvResults: dict[int, loadgen.Result] = {}
    try:
        users = makeMaildirs(os.path.join(fixture, "original"), args.users, args.messages, args.size)

        def prepare(root: str) -> dict[str, str]:
            shutil.copytree(os.path.join(fixture, "original"), root)
            return users

        for server in eachServer(args.servers, prepare):
            asyncio.run(loadgen.run(server.port, 4, args.users, args.messages, 60, args.users))
            for concurrency in args.concurrency:
                before = server.cpuSeconds()
                result = asyncio.run(loadgen.run(
                    server.port, concurrency, args.users, args.messages, args.seconds, args.max_sessions))
                cpu = server.cpuSeconds() - before
                if server.name == "popsrv":
                    popsrvResults[concurrency] = result
                reference = popsrvResults.get(concurrency) if server.name != "popsrv" else None
                print(row(server.name, concurrency, result, cpu, server.rssKilobytes(), reference), flush=True)
    finally:
        shutil.rmtree(fixture, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each concurrency level")
    parser.add_argument("--max-sessions", type=int, default=20000, help="upper bound of sessions per level")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    main(parser.parse_args())
