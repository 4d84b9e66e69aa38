"""
Whether files and directories that the options name can be used: by this
process (L{readableFileProblem}, at startup), each answer a short reason
for a one-line message, or C{None} when all is well.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

__all__ = ["readableFileProblem"]


def _reason(error: OSError) -> str:
    """
    An C{OSError} in a few lower-case words: C{no such file},
    C{permission denied}...
    """
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file"
    text = error.strerror or os.strerror(error.errno or 0) or type(error).__name__
    return text[:1].lower() + text[1:]


def readableFileProblem(path: str) -> Optional[str]:
    """
    Why this process cannot read the regular file at C{path} (C{no such
    file}, C{a directory, not a file}, C{cannot read it: permission
    denied}...), or C{None} if it can.

    A FIFO or a device is refused before it is opened, so nothing blocks.
    """
    if not path.strip():
        return "needs the path of a file"
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno == errno.EACCES:
            return "cannot reach it: permission denied"
        return _reason(error)
    if stat.S_ISDIR(status.st_mode):
        return "a directory, not a file"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return f"cannot read it: {_reason(error)}"
    os.close(descriptor)
    return None
