"""
The first login to a big Maildir, side by side with Dovecot: the time of
PASS + STAT, and how long other clients' sessions take meanwhile.

Three layouts of the same messages (2,015 octets on average, nine in ten
with LF line ends as delivery agents store them, one in ten with CRLF):

  lda      every message in new/, named as Dovecot's LDA names them:
           <time>.M<usec>P<pid>.<host>,S=<file size>
  postfix  every message in new/, named as Postfix's local(8) does, with
           no size: <time>.V<dev>I<inode>M<usec>.<host>
  cur      every message already in cur/, as popsrv left it (with ,S= and
           ,W=), for a server process that never saw this Maildir (no kept
           listing, no index)

Each run starts from a fresh copy of the layout's Maildir (flushed to disk,
so that the writeback of the copy does not run during the login) and a
freshly started server: USER big, then PASS and STAT are timed, and STAT's
count and octets are checked against the messages' POP3 sizes (every line
end as CRLF). Meanwhile another client runs small sessions (connect,
greeting, USER, PASS, STAT, QUIT of a user with 5 messages) one after the
other; those that begin during the PASS + STAT are the stall the login
causes. Before the login, 30 such sessions on the idle server give the
undisturbed time.

    python benchmarks/firstlogin.py --messages 100000 --runs 5 \\
        --layouts lda postfix cur --servers popsrv dovecot --before /tmp/popsrv-before

--before DIR also runs the popsrv of another checkout (as "popsrv-before"),
for example the commit before a change, exported with
`git archive COMMIT | tar -x -C DIR`.

Bounded: --runs logins per server and layout, each with one probe thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from fixtures import benchmarkMessage  # noqa: E402
from harness import startServer  # noqa: E402
from scenarios import Client  # noqa: E402

from popsrv.wire.framing import normalizedSize  # noqa: E402

LAYOUTS = ("lda", "postfix", "cur")
SERVERS = ("popsrv", "popsrv-workers2", "popsrv-before", "dovecot")
SMALL_MESSAGES = 5
IDLE_PROBES = 30
HOST = "mail.example.org"


def message(number: int) -> bytes:
    """
    Message C{number} of a big Maildir: 1 to 4 KB, LF line ends but for
    every tenth message, which has CRLF ones; its first line is unique.
    """
    body = benchmarkMessage(1024 + (number % 7) * 512)
    text = b"X-Number: %d\n" % number + body
    return text.replace(b"\n", b"\r\n") if number % 10 == 0 else text


def fileName(layout: str, number: int, data: bytes) -> str:
    """
    The name a delivery agent (or popsrv, for C{cur}) gives message
    C{number}: twenty messages a second.
    """
    seconds, usec = 1_700_000_000 + number // 20, (number % 20) * 1000 + 17
    if layout == "postfix":
        return f"{seconds}.V801I{0x100000 + number:x}M{usec}.{HOST}"
    name = f"{seconds}.M{usec}P{1000 + number % 5000}.{HOST},S={len(data)}"
    if layout == "cur":
        name += f",W={normalizedSize([data])}:2,"
    return name


def makeMaildir(path: str, layout: str, count: int) -> tuple[int, int]:
    """
    Write a Maildir of C{count} messages in C{layout}; return the count and
    octets STAT must give.
    """
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub))
    into = os.path.join(path, "cur" if layout == "cur" else "new")
    octets = 0
    for number in range(count):
        data = message(number)
        octets += normalizedSize([data])
        # Written directly: an fsync per message would take minutes.
        with open(os.path.join(into, fileName(layout, number, data)), "xb") as f:
            f.write(data)
    return count, octets


def smallSession(port: int) -> tuple[float, float]:
    """
    One small session of user "small"; return how long its greeting and
    the whole session took.
    """
    started = time.perf_counter()
    client = Client(port, timeout=120)
    try:
        greeted = time.perf_counter()
        client.login("small", "pw")
        client.command("STAT")
        client.command("QUIT")
    finally:
        client.close()
    return greeted - started, time.perf_counter() - started


class Probe:
    """
    Small sessions one after the other in a thread, each with its start.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sessions: list[tuple[float, float, float]] = []
        self.inUse = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self.sessions.append((started, *smallSession(self.port)))
            except RuntimeError as error:
                if b"[IN-USE]" not in str(error).encode():
                    raise
                # The server still held the previous session's lock.
                self.inUse += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, begin: float, end: float) -> list[tuple[float, float]]:
        """
        The greeting and session times of the sessions that began between
        C{begin} and C{end}.
        """
        return [(greeting, session) for started, greeting, session in self.sessions if begin <= started <= end]


def oneLogin(name: str, template: str, expected: tuple[int, int], args, probed: bool) -> dict:
    """
    One first login of "big" on a fresh copy of C{template} and a freshly
    started server, with or without small sessions of another user
    running meanwhile.
    """
    work = tempfile.mkdtemp(prefix=f"popsrv-firstlogin-{name}-")
    try:
        root = os.path.join(work, "mail")
        os.makedirs(root)
        subprocess.run(["cp", "-a", template, os.path.join(root, "big")], check=True)
        small = os.path.join(root, "small")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(small, sub))
        for number in range(SMALL_MESSAGES):
            with open(os.path.join(small, "cur", f"{1_600_000_000 + number}.M1P1.{HOST},S=1,W=1:2,"), "wb") as f:
                f.write(b"x\n")
        os.sync()
        users = {"big": "pw", "small": "pw"}
        if name == "popsrv-before":
            from servers import popsrv

            server = popsrv.start(root, users, "--max-connections-per-ip", "0", name=name, tree=args.before)
        else:
            server = startServer(name, root, users)
        if isinstance(server, str):
            raise SystemExit(f"{name}: {server}")
        try:
            idle = [smallSession(server.port)[1] for _ in range(IDLE_PROBES)]
            probe = Probe(server.port)
            if probed:
                probe.start()
            try:
                client = Client(server.port, timeout=600)
                client.command("USER big")
                began = time.perf_counter()
                client.command("PASS pw")
                logged = time.perf_counter()
                stat = client.command("STAT")
                ended = time.perf_counter()
                client.command("QUIT")
                client.close()
            finally:
                if probed:
                    probe.stop()
            got = tuple(int(field) for field in stat.split()[1:3])
            if got != expected:
                raise SystemExit(f"{name}: STAT gave {got}, expected {expected}")
            return {
                "pass": logged - began,
                "stat": ended - logged,
                "total": ended - began,
                "idle": statistics.median(idle),
                "during": probe.during(began, ended),
                "inUse": probe.inUse,
            }
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ms(seconds: float) -> str:
    return f"{1000 * seconds:,.0f}" if seconds >= 0.1 else f"{1000 * seconds:.1f}"


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def spread(durations: list[float]) -> str:
    """
    The median, 99th percentile and worst of sorted durations, in ms.
    """
    if not durations:
        return "-"
    return f"{ms(median(durations))} / {ms(durations[int(len(durations) * 0.99)])} / {ms(durations[-1])}"


def main(args) -> None:
    templates = tempfile.mkdtemp(prefix="popsrv-firstlogin-")
    try:
        print("| layout | server | PASS + STAT alone, median ms (min-max) | PASS + STAT with other sessions, "
              "median ms (min-max) | other sessions during it | their greeting, median / p99 / worst ms | "
              "their session, median / p99 / worst ms | a session on the idle server, median ms |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for layout in args.layouts:
            template = os.path.join(templates, layout)
            expected = makeMaildir(template, layout, args.messages)
            for name in args.servers:
                alone, probed = [], []
                for _ in range(args.runs):
                    alone.append(oneLogin(name, template, expected, args, False))
                    probed.append(oneLogin(name, template, expected, args, True))
                quiet = sorted(run["total"] for run in alone)
                loaded = sorted(run["total"] for run in probed)
                greetings = sorted(greeting for run in probed for greeting, _ in run["during"])
                sessions = sorted(session for run in probed for _, session in run["during"])
                print(
                    f"| {layout} | {name} | {ms(median(quiet))} ({ms(quiet[0])}-{ms(quiet[-1])}) | "
                    f"{ms(median(loaded))} ({ms(loaded[0])}-{ms(loaded[-1])}) | {len(sessions)} | "
                    f"{spread(greetings)} | {spread(sessions)} | "
                    f"{ms(median([run['idle'] for run in alone + probed]))} |",
                    flush=True,
                )
            shutil.rmtree(template)
    finally:
        shutil.rmtree(templates, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5, help="logins per server and layout (median)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=["popsrv", "dovecot"])
    parser.add_argument("--before", help="a checkout of popsrv to run as popsrv-before")
    options = parser.parse_args()
    if "popsrv-before" in options.servers and not options.before:
        parser.error("popsrv-before needs --before DIR")
    main(options)
