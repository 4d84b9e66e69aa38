"""
Short POP3 sessions against a real `twistd popsrv`: sessions per second,
latency percentiles and server CPU time per session.

Each session is what a mail client does on a poll: connect, greeting, USER,
PASS, STAT, LIST, UIDL, RETR of every message, QUIT (nothing is deleted, so
every session sees the same maildrop). Users are picked round-robin from
--users, so concurrent sessions do not contend for a maildrop lock.

The load generator is one asyncio process. Its own ceiling is measured first
against a canned server that answers the same dialogue from memory without
parsing anything: popsrv's figures mean something only well below it.

    python benchmarks/sessions.py --concurrency 1 16 64 --seconds 5

Every run is bounded: --seconds per concurrency level and --max-sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from popsrv.store.maildir import deliver  # noqa: E402


def makeMaildirs(root: str, users: int, messages: int, size: int) -> str:
    """
    Create users' Maildirs with messages of about `size` octets; return the
    password file.
    """
    body = b"".join(b"line %05d of a benchmark message, long enough to be typical\n" % i for i in range(size // 60))
    message = b"From: bench@example.com\nSubject: benchmark\n\n" + body[: size - 50]
    passwd = os.path.join(root, "passwd")
    with open(passwd, "w") as f:
        for u in range(users):
            f.write(f"user{u}:pw{u}\n")
            for _ in range(messages):
                deliver(os.path.join(root, "mail", f"user{u}"), message)
    return passwd


def startPopsrv(root: str, passwd: str) -> tuple[subprocess.Popen, int]:
    """
    Start `twistd -n popsrv` on a free loopback port; return it and the port.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "--logfile=/dev/null", "popsrv",
         "--listen", "tcp:0:interface=127.0.0.1", "--maildir-root", os.path.join(root, "mail"),
         "--auth", f"file:{passwd}"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    # --logfile=/dev/null hides the port; find it from the process's sockets.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        port = listeningPort(process.pid)
        if port:
            return process, port
        if process.poll() is not None:
            raise SystemExit(process.stdout.read().decode())
        time.sleep(0.05)
    process.kill()
    raise SystemExit("popsrv did not start listening")


def listeningPort(pid: int) -> int | None:
    """
    Return the TCP port a process listens on, from /proc.
    """
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            match = re.fullmatch(r"socket:\[(\d+)\]", target)
            if match:
                inodes.add(match.group(1))
    except FileNotFoundError:
        return None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                return int(fields[1].split(":")[1], 16)
    return None


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU time of a process, in seconds.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def session(port: int, user: int, messages: int) -> float:
    """
    Run one client session; return its duration in seconds.
    """
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def line() -> bytes:
        data = await reader.readline()
        if not data.startswith(b"+OK"):
            raise RuntimeError(f"unexpected reply {data!r}")
        return data

    async def multiline() -> None:
        await line()
        while (await reader.readline()) != b".\r\n":
            pass

    await line()
    writer.write(b"USER user%d\r\n" % user)
    await line()
    writer.write(b"PASS pw%d\r\n" % user)
    await line()
    writer.write(b"STAT\r\n")
    await line()
    writer.write(b"LIST\r\n")
    await multiline()
    writer.write(b"UIDL\r\n")
    await multiline()
    for n in range(1, messages + 1):
        writer.write(b"RETR %d\r\n" % n)
        await multiline()
    writer.write(b"QUIT\r\n")
    await line()
    writer.close()
    await writer.wait_closed()
    return time.perf_counter() - started


async def load(port: int, concurrency: int, users: int, messages: int, seconds: float, maxSessions: int):
    """
    Run sessions from `concurrency` clients for `seconds` (or `maxSessions`);
    return the sessions' durations and the wall time.
    """
    durations: list[float] = []
    counter = iter(range(maxSessions))
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        for n in counter:
            if time.perf_counter() > deadline:
                return
            durations.append(await session(port, n % users, messages))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return durations, time.perf_counter() - started


async def cannedServer(messages: int, size: int):
    """
    A server that answers the benchmark dialogue from memory, without
    parsing: the load generator's ceiling.
    """
    body = b"x" * 60 + b"\r\n"
    message = body * (size // len(body))
    listing = b"+OK\r\n" + b"".join(b"%d %d\r\n" % (n, len(message)) for n in range(1, messages + 1)) + b".\r\n"
    retr = b"+OK\r\n" + message + b".\r\n"

    async def handle(reader, writer):
        writer.write(b"+OK ready\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"LIST", b"UIDL"):
                writer.write(listing)
            elif verb == b"RETR":
                writer.write(retr)
            elif verb == b"QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"+OK\r\n")
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def report(name: str, concurrency: int, durations: list[float], wall: float, cpu: float | None) -> dict:
    """
    Print and return one result row.
    """
    durations = sorted(durations)
    count = len(durations)
    row = {
        "server": name,
        "concurrency": concurrency,
        "sessions": count,
        "sessions/s": count / wall,
        "p50 ms": 1000 * statistics.median(durations),
        "p99 ms": 1000 * durations[min(count - 1, int(count * 0.99))],
        "cpu ms/session": None if cpu is None else 1000 * cpu / count,
    }
    cpuText = "-" if cpu is None else f"{row['cpu ms/session']:.2f}"
    print(f"| {name} | {concurrency} | {count} | {row['sessions/s']:.0f} | {row['p50 ms']:.2f} | "
          f"{row['p99 ms']:.2f} | {cpuText} |", flush=True)
    return row


async def main(args) -> None:
    print("| server | clients | sessions | sessions/s | p50 ms | p99 ms | server CPU ms/session |")
    print("|---|---|---|---|---|---|---|")
    canned = await cannedServer(args.messages, args.size)
    cannedPort = canned.sockets[0].getsockname()[1]
    for concurrency in args.concurrency:
        durations, wall = await load(
            cannedPort, concurrency, args.users, args.messages, args.seconds, args.max_sessions
        )
        report("canned (generator ceiling)", concurrency, durations, wall, None)
    canned.close()

    root = tempfile.mkdtemp(prefix="popsrv-bench-")
    try:
        passwd = makeMaildirs(root, args.users, args.messages, args.size)
        process, port = startPopsrv(root, passwd)
        try:
            await load(port, 4, args.users, args.messages, 2, args.users)  # first logins move new/ to cur/
            for concurrency in args.concurrency:
                before = cpuSeconds(process.pid)
                durations, wall = await load(port, concurrency, args.users, args.messages, args.seconds,
                                             args.max_sessions)
                report("popsrv", concurrency, durations, wall, cpuSeconds(process.pid) - before)
        finally:
            process.terminate()
            process.wait(10)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each concurrency level")
    parser.add_argument("--max-sessions", type=int, default=20000, help="upper bound of sessions per level")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    asyncio.run(main(parser.parse_args()))
