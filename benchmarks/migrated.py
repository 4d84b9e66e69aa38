"""
The cost of serving Maildirs moved from Dovecot with Dovecot's UIDLs:

  parse   reading a dovecot-uidlist (and a courierpop3dsizelist) of
          100,000 messages, as a login does the first time (median of 3);
  login   PASS + STAT of a Maildir of 100,000 messages (already in cur/,
          with their sizes in their names) with a dovecot-uidlist and of
          one without, on popsrv's first login after its start and on the
          second, and the worst small session of another user meanwhile.

    python benchmarks/migrated.py [--messages 100000]

Every measure is one bounded sequence of sessions on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from fixtures import benchmarkMessage  # noqa: E402
from scenarios import Client, timed  # noqa: E402
from servers import popsrv  # noqa: E402

from popsrv.store.maildir import deliver  # noqa: E402
from popsrv.store.maildir.courier import readSizelist  # noqa: E402
from popsrv.store.maildir.dovecot import readUidlist  # noqa: E402
from popsrv.store.uidlformat import DEFAULT_UIDL_FORMAT, parseUidlFormat  # noqa: E402


def names(count: int) -> list[str]:
    """Base names as Dovecot's LDA writes them."""
    return [f"{1700000000 + n}.M{n}P{4000 + n}.mail.example.com,S=2048,W=2080" for n in range(1, count + 1)]


def uidlist(count: int) -> bytes:
    """A dovecot-uidlist of C{count} messages, with their GUIDs."""
    lines = [b"3 V1700000000 N%d G42706d17b0c7156b0830000083ecc375\n" % (count + 1)]
    lines += [b"%d G%032x :%s\n" % (n, n, name.encode()) for n, name in enumerate(names(count), 1)]
    return b"".join(lines)


def sizelist(count: int) -> bytes:
    """A courierpop3dsizelist of C{count} messages."""
    lines = [b"/3 %d 1700000000\n" % (count + 1)]
    lines += [b"%s:2,S 2080 %d:1700000000:0\n" % (name.encode(), n) for n, name in enumerate(names(count), 1)]
    return b"".join(lines)


def median(function, *args) -> float:
    return sorted(timed(function, *args)[0] for _ in range(3))[1]


def parse(count: int) -> str:
    data = uidlist(count)
    uidlFormat = parseUidlFormat(DEFAULT_UIDL_FORMAT)
    dovecot = median(readUidlist, data, uidlFormat)
    courierData = sizelist(count)
    courier = median(readSizelist, courierData)
    return (f"dovecot-uidlist of {count:,} messages ({len(data) / 1e6:.1f} MB): {1000 * dovecot:.0f} ms; "
            f"courierpop3dsizelist ({len(courierData) / 1e6:.1f} MB): {1000 * courier:.0f} ms")


def fill(root: str, count: int) -> dict[str, str]:
    """Users small, plain (no uidlist) and moved (a dovecot-uidlist), the last two with C{count} messages."""
    deliver(os.path.join(root, "small"), benchmarkMessage(4096))
    message = benchmarkMessage(2048)
    for user in ("plain", "moved"):
        cur = os.path.join(root, user, "cur")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, user, sub))
        for name in names(count):
            with open(os.path.join(cur, name + ":2,"), "wb") as f:
                f.write(message)
    with open(os.path.join(root, "moved", "dovecot-uidlist"), "wb") as f:
        f.write(uidlist(count))
    return {"small": "pw", "plain": "pw", "moved": "pw"}


def login(port: int, user: str) -> str:
    worst = [0.0]
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            small = Client(port)
            small.login("small", "pw")
            small.command("STAT")
            small.command("QUIT")
            small.close()
            worst[0] = max(worst[0], time.perf_counter() - started)

    thread = threading.Thread(target=probe)
    thread.start()
    client = Client(port)
    client.command(f"USER {user}")
    started = time.perf_counter()
    client.command("PASS pw")
    stat = client.command("STAT")
    seconds = time.perf_counter() - started
    client.command("QUIT")
    client.close()
    stop.set()
    thread.join()
    return f"PASS+STAT {1000 * seconds:.0f} ms ({stat.split()[1].decode()} messages), worst small session " \
           f"{1000 * worst[0]:.0f} ms"


def logins(count: int) -> str:
    work = tempfile.mkdtemp(prefix="popsrv-bench-migrated-")
    try:
        root = os.path.join(work, "mail")
        server = popsrv.start(root, fill(root, count))
        try:
            results = []
            for attempt in ("first", "second"):
                for user in ("plain", "moved"):
                    results.append(f"{attempt} login, {user}: {login(server.port, user)}")
            return "\n- ".join(results)
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100000)
    arguments = parser.parse_args()
    print(f"- parse: {parse(arguments.messages)}", flush=True)
    print(f"- {logins(arguments.messages)}", flush=True)
