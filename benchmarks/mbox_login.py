"""
The `mbox` scenario: how long a login to a big mbox spool takes (the spool
is read whole, in a thread, under its locks), and a QUIT that deletes its
first message (the whole spool rewritten in place, journal first).

    python benchmarks/mbox_login.py --megabytes 100 --messages 10000 --logins 5

A spool of about that size is written once (messages of similar size, each
with a From line in its body, as delivery agents quote them), then served by
`twistd -n popsrv --mbox` from this checkout on 127.0.0.1; each login is
timed from PASS to its reply, with poplib: the first reads the whole spool,
the next ones find it unchanged (a message is delivered before each) and
read only what is new.  Bounded: one spool, a fixed number of logins, one
rewrite.
"""

from __future__ import annotations

import argparse
import os
import poplib
import random
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from popsrv.store.mbox.delivery import fromLine, quote  # noqa: E402


def writeSpool(path: str, megabytes: int, messages: int) -> int:
    """
    Write a spool of C{messages} messages of about C{megabytes} in all;
    return its size.
    """
    rng = random.Random(4155)
    lines = max(1, megabytes * 1_000_000 // messages // 80)
    with open(path, "wb") as spool:
        for number in range(messages):
            body = b"".join(b"line %d of %d %s\n" % (line, number, b"x" * rng.randrange(40, 100))
                            for line in range(lines))
            message = (b"From: s%d@example.org\nTo: alice@example.org\nSubject: message %d\n"
                       b"Message-ID: <%d@example.org>\n\nFrom the body\n" % (number, number, number)) + body
            spool.write(fromLine(f"s{number}@example.org", 1_700_000_000 + number) + quote(message) + b"\n")
    return os.path.getsize(path)


def startServer(directory: str) -> tuple:
    """
    Start popsrv serving C{directory/mail/%u}; return the process and port.
    """
    passwd = os.path.join(directory, "passwd")
    with open(passwd, "w") as f:
        f.write("alice:{PLAIN}secret\n")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    process = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "--logfile=-", "popsrv", "--listen", "tcp:0:interface=127.0.0.1",
         "--mbox", os.path.join(directory, "mail", "%u"), "--auth", f"passwd-file:{passwd}"],
        cwd=directory, env=dict(os.environ, PYTHONPATH=ROOT, STATE_DIRECTORY=os.path.join(directory, "state")),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    for line in iter(process.stdout.readline, b""):
        match = re.search(rb"popsrv listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, int(match.group(1))
    raise RuntimeError("popsrv did not start listening")


def timedLogin(port: int) -> tuple:
    """
    Log in; return the client and the seconds PASS took.
    """
    client = poplib.POP3("127.0.0.1", port, timeout=300)
    client.user("alice")
    started = time.perf_counter()
    client.pass_("secret")
    return client, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--logins", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="popsrv-mbox-bench-") as directory:
        os.mkdir(os.path.join(directory, "mail"))
        spool = os.path.join(directory, "mail", "alice")
        size = writeSpool(spool, arguments.megabytes, arguments.messages)
        process, port = startServer(directory)
        try:
            client, first = timedLogin(port)
            count, _ = client.stat()
            client.quit()
            print(f"spool: {size / 1e6:.1f} MB, {count} messages")
            print(f"first login (the whole spool read): {first:.3f} s")
            times = []
            for number in range(arguments.logins):
                with open(spool, "ab") as stream:
                    stream.write(fromLine("late@example.org") + quote(b"Subject: late %d\n\nnew\n" % number) + b"\n")
                client, seconds = timedLogin(port)
                client.quit()
                times.append(seconds)
            median = sorted(times)[len(times) // 2]
            print(f"later logins, after new mail: best {min(times):.3f} s, median {median:.3f} s")
            client, _ = timedLogin(port)
            client.dele(1)
            started = time.perf_counter()
            client.quit()
            print(f"QUIT deleting message 1 (the spool rewritten): {time.perf_counter() - started:.3f} s")
            client, seconds = timedLogin(port)
            client.quit()
            print(f"the login after that rewrite (the whole spool read): {seconds:.3f} s")
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
