"""
The single-session scenarios, side by side for popsrv, twisted.mail.pop3
(with TCP_NODELAY) and Dovecot:

  bulk    one RETR of a large message (50 MB by default): MB/s and the
          growth of the server's memory while it sends it;
  dele    DELE of every message of a large maildrop (1,000), then QUIT:
          the time of QUIT, that is of the UPDATE state;
  bigbox  a maildrop of 100,000 messages: time to PASS, STAT, full LIST and
          full UIDL on the first login (new mail moved to cur/) and on the
          second, memory after login, and the worst latency of another
          client's small sessions meanwhile (does a big mailbox block the
          others?).

    python benchmarks/scenarios.py bulk dele bigbox --servers popsrv twisted-nodelay dovecot

Every scenario is one bounded sequence of sessions on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from fixtures import benchmarkMessage  # noqa: E402
from harness import eachServer  # noqa: E402

from popsrv.store.maildir import deliver  # noqa: E402

SERVERS = ("popsrv", "twisted-nodelay", "dovecot")
BULK_REPEATS = 7


class Client:
    """
    A minimal blocking POP3 client that measures what it reads.
    """

    def __init__(self, port: int, timeout: float = 300) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = bytearray()
        self.line()

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("server closed the connection")
        self.buffer += data

    def line(self) -> bytes:
        """
        Read one reply line; it must be +OK.
        """
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"unexpected reply {line[:100]!r}")
        return line

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multiline(self, text: str) -> int:
        """
        Send a command with a multi-line reply; return the octets of its body.
        """
        self.command(text)
        while True:
            end = self.buffer.find(b"\r\n.\r\n")
            if end >= 0 or self.buffer.startswith(b".\r\n"):
                break
            # Keep the buffer small: only its tail can hold the terminator.
            if len(self.buffer) > 1 << 20:
                kept = self.buffer[-4:]
                self._discarded = getattr(self, "_discarded", 0) + len(self.buffer) - 4
                self.buffer = bytearray(kept)
            self._fill()
        size = (end + 2 if end >= 0 else 0) + getattr(self, "_discarded", 0)
        del self.buffer[: (end + 5 if end >= 0 else 3)]
        self._discarded = 0
        return size

    def login(self, user: str, password: str) -> None:
        self.command(f"USER {user}")
        self.command(f"PASS {password}")

    def close(self) -> None:
        self.sock.close()


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def bulk(server, megabytes: int) -> str:
    client = Client(server.port)
    client.login("bulk", "pw")
    before = server.rssKilobytes()
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], server.rssKilobytes())

    watcher = threading.Thread(target=watch)
    watcher.start()
    # One transfer takes a tenth of a second: take the median of several.
    runs = sorted(timed(client.multiline, "RETR 1") for _ in range(BULK_REPEATS))
    seconds, octets = runs[len(runs) // 2]
    done.set()
    watcher.join()
    client.command("QUIT")
    client.close()
    growth = (peak[0] - before) / 1024
    return (f"{octets / seconds / 1e6:.0f} MB/s ({octets / 1e6:.0f} MB in {seconds:.3f} s, median of "
            f"{BULK_REPEATS}), RSS +{growth:.1f} MB")


def dele(server, count: int) -> str:
    client = Client(server.port)
    client.login("dele", "pw")
    for n in range(1, count + 1):
        client.command(f"DELE {n}")
    seconds, _ = timed(client.command, "QUIT")
    client.close()
    return f"QUIT after {count} DELE: {1000 * seconds:.1f} ms"


def bigbox(server, count: int) -> str:
    results = []
    for attempt in ("first", "second"):
        worst = [0.0]
        stop = threading.Event()

        def probe(stop=stop, worst=worst) -> None:
            while not stop.is_set():
                started = time.perf_counter()
                small = Client(server.port)
                small.login("small", "pw")
                small.command("STAT")
                small.command("QUIT")
                small.close()
                worst[0] = max(worst[0], time.perf_counter() - started)

        thread = threading.Thread(target=probe)
        thread.start()
        client = Client(server.port)
        client.command("USER big")
        login, _ = timed(client.command, "PASS pw")
        stat, _ = timed(client.command, "STAT")
        listing, _ = timed(client.multiline, "LIST")
        uidl, _ = timed(client.multiline, "UIDL")
        rss = server.rssKilobytes()
        client.command("QUIT")
        client.close()
        stop.set()
        thread.join()
        results.append(f"{attempt}: PASS {1000 * login:.0f} ms, STAT {1000 * stat:.1f}, LIST {1000 * listing:.0f}, "
                       f"UIDL {1000 * uidl:.0f}, RSS {rss / 1024:.0f} MB, worst small session {1000 * worst[0]:.0f} ms")
    return "; ".join(results)


def prepare(root: str, scenario: str, args) -> dict[str, str]:
    """
    Fill the Maildirs a scenario needs; return its users.
    """
    users = {"small": "pw"}
    deliver(os.path.join(root, "small"), benchmarkMessage(4096))
    if scenario == "bulk":
        users["bulk"] = "pw"
        deliver(os.path.join(root, "bulk"), benchmarkMessage(args.megabytes * 1000000))
    elif scenario == "dele":
        users["dele"] = "pw"
        message = benchmarkMessage(4096)
        for _ in range(args.dele):
            deliver(os.path.join(root, "dele"), message)
    else:
        users["big"] = "pw"
        message = benchmarkMessage(2048)
        new = os.path.join(root, "big", "new")
        deliver(os.path.join(root, "big"), message)
        for n in range(1, args.messages):
            # Written directly: deliver()'s fsync per message would take minutes.
            with open(os.path.join(new, f"{1700000000 + n}.M{n:06d}P1.bench"), "wb") as f:
                f.write(message)
    return users


def main(args) -> None:
    measures = {"bulk": lambda server: bulk(server, args.megabytes), "dele": lambda server: dele(server, args.dele),
                "bigbox": lambda server: bigbox(server, args.messages)}
    for scenario in args.scenarios:
        print(f"## {scenario}", flush=True)
        for server in eachServer(args.servers, lambda root, scenario=scenario: prepare(root, scenario, args)):
            print(f"- {server.name}: {measures[scenario](server)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="+", choices=("bulk", "dele", "bigbox"))
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--megabytes", type=int, default=50, help="bulk: size of the message")
    parser.add_argument("--dele", type=int, default=1000, help="dele: messages to delete")
    parser.add_argument("--messages", type=int, default=100000, help="bigbox: messages in the maildrop")
    main(parser.parse_args())
