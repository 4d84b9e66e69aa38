"""
The `sessions` scenario driven by popload, the C load generator in this
directory (`popload.c`): short POP3 sessions against popsrv, Twisted's
twisted.mail.pop3 and Dovecot, side by side in one run, medians of
repetitions.

popload is one thread on epoll and costs about 0.3 ms of CPU per session,
where the Python generator (`sessions.py`, `loadgen.py`) costs several: on
a 2-core machine the Python generator takes most of a core, so a server
gets what is left, and servers that use both cores (Dovecot's processes,
popsrv --workers 2) are held back more than one-process servers. Compare
servers with popload; the Python generator's figures show how a server
behaves when the machine is busy.

One session = connect, greeting, USER, PASS, STAT, LIST, UIDL, RETR of every
message (20 x 4 KB by default), QUIT, over 200 users taken round robin
(no lock contention), after one warm-up pass (the first logins move new
mail to cur/). For each concurrency level and repetition: sessions/s,
latency (p50, p99) and the server's CPU per session (all its processes);
the server's proportional set size (PSS) once the levels are run.

    python benchmarks/poploadsessions.py --servers popsrv-workers2 dovecot \\
        --concurrency 16 64 --seconds 5 --runs 3

Bounded: each level runs --seconds (and at most --max-sessions sessions)
--runs times; popload itself stops at a hard deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from fixtures import makeMaildirs  # noqa: E402
from harness import SERVERS, eachServer  # noqa: E402

SCRIPT = "STAT,LIST,UIDL,RETRALL,QUIT"


def buildPopload(into: str) -> str:
    """
    Compile popload.c with the system's C compiler; return the program.
    """
    program = os.path.join(into, "popload")
    subprocess.run(["cc", "-O2", "-o", program, os.path.join(HERE, "popload.c")], check=True)
    return program


def writeUsers(path: str, users: dict[str, str]) -> str:
    """
    Write popload's users file (one "user:password" a line); return its path.
    """
    with open(path, "w") as f:
        f.writelines(f"{user}:{password}\n" for user, password in users.items())
    return path


def copying(fixture: str, users: dict[str, str]):
    """
    The C{prepare} of L{harness.eachServer}: a fresh copy of the Maildirs
    under C{fixture} for each server, whose users are C{users}.
    """

    def prepare(root: str) -> dict[str, str]:
        shutil.copytree(fixture, root)
        return users

    return prepare


def runPopload(
    program: str, port: int, usersFile: str, concurrency: int, seconds: float, maxSessions: int, script: str = SCRIPT,
    verify: bool = True,
) -> dict:
    """
    One closed-loop run of popload; return its RESULT.  Unless C{verify} is
    false (popload's canned server), a run with errors or messages of the
    wrong size ends the benchmark.
    """
    command = [
        program, "run", "--port", str(port), "--users", usersFile, "--script", script,
        "--concurrency", str(concurrency), "--duration", str(seconds), "--max-sessions", str(maxSessions),
        "--deadline", str(seconds + 60), "--quiet",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 120).stdout
    [line] = [line for line in output.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    stats = result["stats"]
    if verify and (stats["errors"] or stats["size_mismatch"]):
        raise SystemExit(f"popload reported errors on port {port}: {stats}")
    return result


def cannedCeiling(program: str, usersFile: str, args) -> dict[int, float]:
    """
    popload's sessions/s against its own canned in-memory server.
    """
    with socketPort() as port:
        server = subprocess.Popen(
            [program, "fakeserver", "--port", str(port), "--fake-nmsg", str(args.messages),
             "--fake-msg-size", str(args.size), "--deadline", "600"],
            stdout=subprocess.DEVNULL,
        )
    try:
        waitForPort(port)
        return {
            c: runPopload(program, port, usersFile, c, args.seconds, args.max_sessions, verify=False)["stats"][
                "sessions_per_s"
            ]
            for c in args.concurrency
        }
    finally:
        server.terminate()
        server.wait(10)


class socketPort:
    """
    A free port on 127.0.0.1, found by binding port 0 (released on exit).
    """

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return self._socket.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._socket.close()


def waitForPort(port: int, seconds: float = 10.0) -> None:
    """
    Wait until something accepts connections on the port.
    """
    import socket
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main(args) -> None:
    work = tempfile.mkdtemp(prefix="popsrv-popload-")
    try:
        program = buildPopload(work)
        fixture = os.path.join(work, "original")
        users = makeMaildirs(fixture, args.users, args.messages, args.size)
        usersFile = writeUsers(os.path.join(work, "users.txt"), users)
        print("popload against its canned server: "
              + ", ".join(f"{c} clients {rate:.0f}/s" for c, rate in cannedCeiling(program, usersFile, args).items()))
        print("| server | clients | sessions/s (median, min-max) | p50 ms | p99 ms | server CPU ms/session"
              " | generator CPU ms/session | PSS MB after |")
        print("|---|---|---|---|---|---|---|---|")

        for server in eachServer(args.servers, copying(fixture, users)):
            runPopload(program, server.port, usersFile, 4, 120, args.users)
            rows = []
            for concurrency in args.concurrency:
                results = []
                for _ in range(args.runs):
                    before = server.cpuSeconds()
                    result = runPopload(program, server.port, usersFile, concurrency, args.seconds, args.max_sessions)
                    stats = result["stats"]
                    cpu = server.cpuSeconds() - before
                    sessions = stats["ok"]
                    client = result["client_cpu_user_s"] + result["client_cpu_sys_s"]
                    results.append((stats["sessions_per_s"], stats["lat_p50_ms"], stats["lat_p99_ms"],
                                    1000 * cpu / sessions, 1000 * client / sessions))
                rows.append((concurrency, results))
            pss = server.pssKilobytes() / 1024
            for concurrency, results in rows:
                rates = [r[0] for r in results]
                median = [statistics.median(column) for column in zip(*results)]
                print(f"| {server.name} | {concurrency} | {median[0]:.0f} ({min(rates):.0f}-{max(rates):.0f}) "
                      f"| {median[1]:.2f} | {median[2]:.2f} | {median[3]:.2f} | {median[4]:.2f} | {pss:.0f} |",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=["popsrv", "popsrv-workers2", "dovecot"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each level (the median is reported)")
    parser.add_argument("--max-sessions", type=int, default=20000, help="upper bound of sessions per run")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    main(parser.parse_args())
