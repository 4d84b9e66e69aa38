"""
The `bulk` scenario driven by popload (`popload.c` in this directory): RETR
of one big message, side by side with Dovecot and twisted.mail.pop3.

One user's Maildir holds one message of --megabytes MB (LF line ends, as
delivery agents store them); popload runs --runs sessions one after the
other, each USER, PASS, RETR 1, QUIT, after one warm-up session. The rate
is the message's wire size over the time of the RETR step (from the
command to the terminator), the median of the runs; the server's memory
(RSS, all its processes) is read before and after.

    python benchmarks/poploadbulk.py --servers popsrv dovecot --megabytes 50 --runs 7

Bounded: --runs sessions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from fixtures import makeMaildirs  # noqa: E402
from harness import SERVERS, eachServer  # noqa: E402
from poploadsessions import buildPopload, copying, runPopload, writeUsers  # noqa: E402


def retrSeconds(result: dict) -> float:
    """
    The time of the RETR steps of a popload run, in seconds.
    """
    return sum(step["total_ms"] for step in result["stats"]["steps"] if step["op"].startswith("RETR")) / 1000


def main(args) -> None:
    work = tempfile.mkdtemp(prefix="popsrv-poploadbulk-")
    try:
        program = buildPopload(work)
        fixture = os.path.join(work, "original")
        users = makeMaildirs(fixture, 1, 1, args.megabytes * 10**6)
        usersFile = writeUsers(os.path.join(work, "users.txt"), users)
        print(f"| server | RETR of a message of {args.megabytes} MB, MB/s (median, min-max) "
              "| RSS before / after, MB |")
        print("|---|---|---|")

        for server in eachServer(args.servers, copying(fixture, users)):
            warm = runPopload(program, server.port, usersFile, 1, 120, 1, script="RETR:1,QUIT")
            wireOctets = warm["stats"]["retr_bytes"]
            before = server.rssKilobytes()
            rates = []
            for _ in range(args.runs):
                result = runPopload(program, server.port, usersFile, 1, 120, 1, script="RETR:1,QUIT")
                rates.append(wireOctets / retrSeconds(result) / 1e6)
            after = server.rssKilobytes()
            print(f"| {server.name} | {statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f}) "
                  f"| {before / 1024:.1f} / {after / 1024:.1f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=["popsrv", "twisted-nodelay", "dovecot"])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    main(parser.parse_args())
