"""
The `command_timing` scenario: what timing each command costs a session,
against what one log event per command would cost, all in this process.

    python benchmarks/command_timing.py --commands 20000 --rounds 5

1. STAT after STAT in one logged-in session over an in-memory transport
   (the real POP3Protocol, a real clock), with the factory's timeCommands
   off and on (`--metrics` turns it on): microseconds per command.

2. The alternative not taken, one `command` log event per command:
   - in a worker, the event logged and written as a JSON line to a pipe,
     as a worker's log observer does;
   - in the parent, that line decoded and published as the relay of
     `--workers` does (popsrv.app.workers: eventFromJSON, then the global
     log publisher), to a text log in /dev/null as twistd's.

3. What `--metrics` adds to each session, for a session like the
   `sessions` scenario's (USER, PASS, STAT, LIST, UIDL, 20 RETR, QUIT, run
   in memory to capture its real events): its session-end event's JSON
   with and without the command times (made in a worker, read in the
   parent), the metrics observer on the session's events (connect, login,
   session-end), and one scrape's text.

Each figure is the best of `--rounds` runs of `--commands` commands (the
two STAT loops taking turns), or sessions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import reactor  # noqa: E402
from twisted.logger import (  # noqa: E402
    Logger,
    LogPublisher,
    capturedLogs,
    eventAsJSON,
    eventFromJSON,
    globalLogBeginner,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)

from popsrv.app.metrics import MetricsObserver  # noqa: E402
from popsrv.store.memory import MemoryRealm  # noqa: E402
from tests.support.session import Session, makePortal  # noqa: E402

COMMAND_EVENT = "{command} from {peer} took {seconds:.6f}s"


def best(rounds: int, run: Callable[[], float]) -> float:
    """
    The smallest of C{rounds} results of C{run}.
    """
    return min(run() for _ in range(rounds))


def statLoop(timeCommands: bool, commands: int) -> float:
    """
    Microseconds per STAT in one session.
    """
    realm = MemoryRealm()
    realm.maildrop("alice").add(b"Subject: x\r\n\r\nhello\r\n")
    portal, _ = makePortal(realm=realm)
    session = Session(portal, clock=reactor, timeCommands=timeCommands)
    session.login()
    started = time.perf_counter()
    for _ in range(commands):
        session.protocol.dataReceived(b"STAT\r\n")
        session.transport.clear()
    elapsed = time.perf_counter() - started
    session.send("QUIT")
    session.lose()
    return elapsed / commands * 1e6


def workerSide(commands: int) -> tuple[float, list[bytes]]:
    """
    Microseconds per command event logged as a JSON line to a pipe; and
    the lines, for the parent's side.
    """
    readEnd, writeEnd = os.pipe()
    os.set_blocking(readEnd, False)
    publisher = LogPublisher()
    with os.fdopen(writeEnd, "w", buffering=1) as out:
        publisher.addObserver(jsonFileLogObserver(out, recordSeparator=""))
        log = Logger(namespace="popsrv.pop3.protocol.POP3Protocol", observer=publisher)
        data = []
        started = time.perf_counter()
        for index in range(commands):
            log.info(COMMAND_EVENT, command="STAT", peer="127.0.0.1:40000", seconds=0.00012, event="command")
            if index % 64 == 0:
                data.append(_drain(readEnd))
        elapsed = time.perf_counter() - started
    data.append(_drain(readEnd))
    os.close(readEnd)
    return elapsed / commands * 1e6, b"".join(data).split(b"\n")[:-1]


def _drain(fd: int) -> bytes:
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks)


def parentSide(lines: list[bytes]) -> float:
    """
    Microseconds per line relayed by the parent of the workers.
    """
    started = time.perf_counter()
    for line in lines:
        event = eventFromJSON(line.decode("utf-8"))
        event["worker"] = 0
        event["log_system"] = "popsrv.pop3.protocol.POP3Protocol#info worker 0"
        globalLogPublisher(event)
    return (time.perf_counter() - started) / len(lines) * 1e6


def sessionEvents() -> list[dict]:
    """
    The log events of one session like the sessions scenario's, with its
    commands timed.
    """
    realm = MemoryRealm()
    for index in range(20):
        realm.maildrop("alice").add(b"Subject: %d\r\n\r\n" % index + b"x" * 4000 + b"\r\n")
    portal, _ = makePortal(realm=realm)
    with capturedLogs() as events:
        session = Session(portal, clock=reactor, timeCommands=True)
        session.login()
        for command in ["STAT", "LIST", "UIDL"] + [f"RETR {n}" for n in range(1, 21)] + ["QUIT"]:
            session.send(command)
        session.lose()
    return [event for event in events if event.get("event") in ("connect", "login", "session-end")]


def perSession(events: list[dict], sessions: int) -> dict[str, float]:
    """
    Microseconds per session of what --metrics adds.
    """
    (end,) = [event for event in events if event["event"] == "session-end"]
    plain = {key: value for key, value in end.items() if key != "commands"}
    figures = {}
    for name, event in (("plain", plain), ("timed", end)):
        line = eventAsJSON(event)
        started = time.perf_counter()
        for _ in range(sessions):
            eventAsJSON(event)
        figures[f"encode {name}"] = (time.perf_counter() - started) / sessions * 1e6
        started = time.perf_counter()
        for _ in range(sessions):
            eventFromJSON(line)
        figures[f"decode {name}"] = (time.perf_counter() - started) / sessions * 1e6
        figures[f"octets {name}"] = len(line)
    observer = MetricsObserver()
    started = time.perf_counter()
    for _ in range(sessions):
        for event in events:
            observer(event)
    figures["observer"] = (time.perf_counter() - started) / sessions * 1e6
    started = time.perf_counter()
    text = observer.render()
    figures["render"] = (time.perf_counter() - started) * 1e6
    figures["render octets"] = len(text)
    return figures


def main(args: argparse.Namespace) -> None:
    """
    Run the scenario and print a table.
    """
    with open(os.devnull, "w") as devnull:
        globalLogBeginner.beginLoggingTo([textFileLogObserver(devnull)], redirectStandardIO=False)
        off = on = float("inf")
        for _ in range(args.rounds):
            off = min(off, statLoop(False, args.commands))
            on = min(on, statLoop(True, args.commands))
        worker, lines = workerSide(args.commands)
        worker = min([worker] + [workerSide(args.commands)[0] for _ in range(args.rounds - 1)])
        parent = best(args.rounds, lambda: parentSide(lines))
        events = sessionEvents()
        rounds = [perSession(events, args.commands // 10) for _ in range(args.rounds)]
    session = {key: min(figures[key] for figures in rounds) for key in rounds[0]}
    print("| what | us per command |")
    print("|---|---|")
    print(f"| STAT, commands not timed | {off:.2f} |")
    print(f"| STAT, commands timed (--metrics) | {on:.2f} (+{on - off:.2f}) |")
    print(f"| one command event, in the worker (log, JSON, pipe) | {worker:.2f} |")
    print(f"| one command event, in the parent (decode, publish) | {parent:.2f} |")
    print(f"({len(lines[0])} octets of JSON per event)")
    print()
    print("| what --metrics adds to a session | us per session |")
    print("|---|---|")
    for step, where in (("encode", "to JSON, in a worker"), ("decode", "from JSON, in the parent")):
        plain, timed = session[f"{step} plain"], session[f"{step} timed"]
        print(f"| session-end {where}: {session['octets plain']:.0f} octets, {session['octets timed']:.0f} "
              f"with the command times | {plain:.1f}, {timed:.1f} (+{timed - plain:.1f}) |")
    print(f"| the metrics observer: connect, login, session-end | {session['observer']:.1f} |")
    print(f"| a scrape: {session['render octets']:.0f} octets of text | {session['render']:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    main(parser.parse_args())
