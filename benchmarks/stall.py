"""
Does one user's first login with a large new message stall other sessions?

popsrv measures a new message (reads it whole) when it first moves it from
new/ to cur/. This starts `twistd popsrv` with a Maildir holding one large
new message for user "big", keeps connecting as another client and timing
how long the greeting takes, logs in as "big" meanwhile, and reports the
login time and the greeting latencies seen during it.

    python benchmarks/stall.py --megabytes 300 [--tree ANOTHER_CHECKOUT]

Bounded: one login, and greeting probes for at most --seconds.
"""

from __future__ import annotations

import argparse
import os
import poplib
import shutil
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from servers import popsrv  # noqa: E402

from popsrv.store.maildir import deliver  # noqa: E402


def main(args) -> None:
    root = tempfile.mkdtemp(prefix="popsrv-stall-")
    try:
        line = b"x" * 99 + b"\n"
        deliver(os.path.join(root, "mail", "big"), b"Subject: big\n\n" + line * (args.megabytes * 10000))
        server = popsrv.start(os.path.join(root, "mail"), {"big": "pw", "small": "pw"}, tree=args.tree)
        port = server.port
        try:
            probes: list[tuple[float, float]] = []
            stop = threading.Event()

            def probe() -> None:
                deadline = time.perf_counter() + args.seconds
                while not stop.is_set() and time.perf_counter() < deadline:
                    started = time.perf_counter()
                    with socket.create_connection(("127.0.0.1", port)) as sock:
                        sock.makefile("rb").readline()
                        probes.append((started, time.perf_counter() - started))
                        sock.sendall(b"QUIT\r\n")

            thread = threading.Thread(target=probe)
            thread.start()
            time.sleep(0.3)
            client = poplib.POP3("127.0.0.1", port, timeout=60)
            client.user("big")
            began = time.perf_counter()
            client.pass_("pw")
            ended = time.perf_counter()
            client.quit()
            stop.set()
            thread.join()
            during = sorted(d for s, d in probes if began <= s <= ended)
            print(f"login with a new {args.megabytes} MB message: {1000 * (ended - began):.0f} ms")
            if during:
                print(f"greetings during it: {len(during)}, median {1000 * during[len(during) // 2]:.2f} ms, "
                      f"worst {1000 * during[-1]:.1f} ms")
        finally:
            server.stop()
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tree", default=popsrv.ROOT, help="the popsrv checkout to run (default: this one)")
    main(parser.parse_args())
