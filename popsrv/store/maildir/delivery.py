"""
Writing into a Maildir the way a delivery agent does (C{tmp/}, then a
rename into C{new/}): for the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

__all__ = ["deliver", "hasMessages"]

_deliveries = itertools.count()


def deliver(maildir: str, message: bytes) -> str:
    """
    Deliver a message into a Maildir the way an MDA does (write in C{tmp/},
    then rename into C{new/}), creating the Maildir if needed; return the
    new file's name.
    """
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    name = f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}Q{next(_deliveries)}.{host}"
    temporary = os.path.join(maildir, "tmp", name)
    with open(temporary, "xb") as f:
        f.write(message)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temporary, os.path.join(maildir, "new", name))
    return name


def hasMessages(maildir: str) -> bool:
    """
    Return whether a Maildir (which may not exist) holds any message.
    """
    for sub in ("new", "cur"):
        try:
            if any(not name.startswith(".") for name in os.listdir(os.path.join(maildir, sub))):
                return True
        except FileNotFoundError:
            pass
    return False
