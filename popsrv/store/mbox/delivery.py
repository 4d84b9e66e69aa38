"""
Appending a message to an mbox spool the way a delivery agent does (under
the dotlock and the C{fcntl} lock, a C{From } line first, C{From } lines
of the message quoted mboxrd-style, a blank line after it): for the tests,
the benchmarks and embedding applications.
"""

from __future__ import annotations

import os
import re
import time
from typing import Optional

from popsrv.store.mbox.locking import SpoolLocks
from popsrv.store.mbox.spool import OpenedSpool

__all__ = ["deliver", "fromLine", "quote"]

_FROM = re.compile(rb"(?m)^(>*From )")


def quote(message: bytes) -> bytes:
    """
    Quote a message mboxrd-style: a line matching C{^>*From } gets one more
    C{>}.
    """
    return _FROM.sub(rb">\1", message)


def fromLine(sender: str = "MAILER-DAEMON", when: Optional[float] = None) -> bytes:
    """
    A separator line, as delivery agents write it (C{From sender date}),
    with its line end.
    """
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(time.time() if when is None else when))
    return f"From {sender} {stamp}\n".encode("ascii")


def deliver(path: str, message: bytes, sender: str = "MAILER-DAEMON", when: Optional[float] = None) -> int:
    """
    Append C{message} to the spool at C{path} (made, mode 0600, if it is
    missing), under its locks; return where its separator line starts.

    @raise OSError: if it cannot be written whole (the spool is left as it
        was).
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    spool = OpenedSpool.open(path, None)
    try:
        locks = SpoolLocks(spool)
        file = locks.acquire()
        assert file is not None
        try:
            end = file.size()
            last = os.pread(file.fd, 2, max(0, end - 2))
            # The separator must follow a blank line.
            before = b"" if end == 0 or last == b"\n\n" else b"\n" if last.endswith(b"\n") else b"\n\n"
            body = quote(message)
            if not body.endswith(b"\n"):
                body += b"\n"
            data = before + fromLine(sender, when) + body + b"\n"
            try:
                # A write may write less than it is given (a full disk); the
                # next one says why, and the spool is cut back.
                written = 0
                while written < len(data):
                    written += os.pwrite(file.fd, data[written:], end + written)
                os.fsync(file.fd)
            except BaseException:
                os.ftruncate(file.fd, end)
                raise
        finally:
            locks.release()
        return end + len(before)
    finally:
        spool.close()
