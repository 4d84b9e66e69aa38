"""
The `idle` scenario driven by popload (`popload.c` in this directory): many
logged-in sessions that sit idle, as mail clients that keep a connection
open; the server's memory per idle session, side by side with Dovecot and
twisted.mail.pop3.

Each idle session is a user of its own (a maildrop is locked by its
session) whose Maildir holds --messages messages; every user logs in once
first (a warm-up pass: new mail moved to cur/, listings made), then popload
opens --sessions sessions, each USER, PASS, STAT and then nothing. The
server's memory (RSS and PSS, all its processes) is read before and while
they are held; the difference divided by the sessions held is the cost of
one. Then --probes sessions of another user run one after the other while
the others idle, and the same probes with nothing held, for their latency.

    python benchmarks/poploadidle.py --servers popsrv dovecot --sessions 2000

Bounded: --sessions idle sessions, --probes probe sessions, popload's hard
deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from fixtures import makeMaildirs  # noqa: E402
from harness import SERVERS, eachServer  # noqa: E402
from poploadsessions import buildPopload, copying, runPopload, writeUsers  # noqa: E402


def holdIdle(program: str, server, idleUsers: str, probeUsers: str, sessions: int, probes: int) -> dict:
    """
    Open the idle sessions, read the server's memory while they are held,
    run the probes; return popload's result with the memory read.
    """
    command = [
        program, "idle", "--port", str(server.port), "--users", idleUsers, "--idle-count", str(sessions),
        "--idle-inflight", "50", "--probes", str(probes), "--probe-users", probeUsers,
        "--deadline", "300", "--quiet",
    ]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        measured: dict = {}
        for line in process.stdout:
            if line.startswith("SYNC idle_ready"):
                measured["ready"] = json.loads(line.split(" ", 2)[2])
                measured["rss"] = server.rssKilobytes()
                measured["pss"] = server.pssKilobytes()
                process.stdin.write("go\n")
                process.stdin.flush()
            elif line.startswith("SYNC probes_done"):
                process.stdin.write("go\n")
                process.stdin.flush()
            elif line.startswith("RESULT "):
                measured["result"] = json.loads(line[len("RESULT "):])
        process.wait(60)
        return measured
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def main(args) -> None:
    work = tempfile.mkdtemp(prefix="popsrv-poploadidle-")
    try:
        program = buildPopload(work)
        fixture = os.path.join(work, "original")
        users = makeMaildirs(fixture, args.sessions + 1, args.messages, args.size)
        names = list(users)
        probeUsers = writeUsers(os.path.join(work, "probe.txt"), {names[0]: users[names[0]]})
        idleUsers = writeUsers(os.path.join(work, "idle.txt"), {name: users[name] for name in names[1:]})
        allUsers = writeUsers(os.path.join(work, "all.txt"), users)
        print("| server | idle sessions held | memory per idle session, RSS / PSS KB | probe session p50 ms, "
              "with them / without | server RSS / PSS MB while held |")
        print("|---|---|---|---|---|")

        for server in eachServer(args.servers, copying(fixture, users)):
            runPopload(program, server.port, allUsers, 8, 300, len(names))
            alone = runPopload(program, server.port, probeUsers, 1, 60, args.probes)["stats"]["lat_p50_ms"]
            rss, pss = server.rssKilobytes(), server.pssKilobytes()
            measured = holdIdle(program, server, idleUsers, probeUsers, args.sessions, args.probes)
            held = measured["ready"]["holding"]
            if held < args.sessions:
                print(f"- {server.name}: only {held} of {args.sessions} sessions held: {measured['ready']}")
            perRss = (measured["rss"] - rss) / max(held, 1)
            perPss = (measured["pss"] - pss) / max(held, 1)
            probe = measured["result"]["probe"].get("lat_p50_ms")
            # (popload gives a negative time when no probe got through.)
            probeText = "-" if probe is None or probe < 0 else f"{probe:.2f}"
            print(f"| {server.name} | {held} | {perRss:.1f} / {perPss:.1f} | {probeText} / {alone:.2f} "
                  f"| {measured['rss'] / 1024:.0f} / {measured['pss'] / 1024:.0f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=["popsrv", "popsrv-workers2", "dovecot"])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    main(parser.parse_args())
