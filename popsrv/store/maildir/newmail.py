"""
Taking new mail into C{cur/}: measuring each message's POP3 size once, and
recording it in the name (C{,S=} and C{,W=}) as it moves from C{new/} to
C{cur/}, through the directories opened at lock time; with a pacer that
lets the reactor thread have the GIL while this runs in a thread.
"""

from __future__ import annotations

import os
import re
import time
from typing import Iterator, List, Optional, Tuple

from popsrv.store.maildir.directory import Directory, NotAFile
from popsrv.store.maildir.listing import recordedSize, splitName
from popsrv.wire.framing import normalizedSize

__all__ = ["ENTRY_WORK", "NAME_WORK", "GILPacer", "deliverNew", "measure", "recordSize"]

MEASURE_CHUNK = 2**20
# What handling one file name costs, in measured octets (about 1 µs of CPU
# per 1 KiB measured, several µs per name): the pacer yields every ~250 names.
NAME_WORK = 4096
# What reading one directory entry costs, in the same units.
ENTRY_WORK = NAME_WORK // 4
PHYSICAL_SIZE = re.compile(r",S=\d+")


class GILPacer:
    """
    Gives up the GIL after every C{every} octets of CPU-bound work.

    Measuring holds the GIL; in a worker thread, the reactor thread would
    otherwise wait up to the switch interval each of the many times it
    needs the GIL back (the "convoy effect").  Yielding per file instead
    would cost a thread switch per small message.
    """

    def __init__(self, every: int = MEASURE_CHUNK) -> None:
        self._every = every
        self._done = 0

    def account(self, octets: int) -> None:
        """Count C{octets} of work; yield the GIL once enough is done."""
        self._done += octets
        if self._done >= self._every:
            self._done = 0
            time.sleep(0)


def measure(directory: Directory, fileName: str, pacer: GILPacer) -> tuple[int, int]:
    """
    Return a stored message's file size and POP3 size.

    @raise NotAFile: if it is not a regular file.
    @raise FileNotFoundError: if it is gone.
    """
    with directory.openMessage(fileName) as f:
        physical = os.fstat(f.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            while chunk := f.read(MEASURE_CHUNK):
                yield chunk
                pacer.account(len(chunk))

        return physical, normalizedSize(chunks())


def deliverNew(new: Directory, cur: Directory, pacer: GILPacer) -> Tuple[List[str], List[Tuple[str, str]]]:
    """
    Move every message in C{new/} to C{cur/}, recording its sizes; return
    the names in C{new/} that are not regular files, and those of the
    files that could not be taken (unreadable, or a name too long for the
    sizes), with why: all are left where they are.
    """
    names, others = new.listFiles(lambda: pacer.account(ENTRY_WORK))
    unusable = []
    for fileName in names:
        pacer.account(NAME_WORK)
        base, info = splitName(fileName)
        target = fileName if info else base + ":2,"
        try:
            recordSize(new, fileName, target, cur, pacer)
        except OSError as error:
            unusable.append((fileName, error.strerror or type(error).__name__))
    return others, unusable


def recordSize(directory: Directory, fileName: str, target: str, cur: Directory, pacer: GILPacer) -> Optional[str]:
    """
    Measure a message in C{directory} and rename it into C{cur} as
    C{target} with its sizes in the name; return the new name (C{None} if
    it vanished or is not a regular file).

    @raise OSError: it cannot be read, or renamed (its name with the sizes
        is too long).
    """
    base, info = splitName(target)
    if recordedSize(base) is None:
        try:
            physical, size = measure(directory, fileName, pacer)
        except (FileNotFoundError, NotAFile):
            return None
        if not PHYSICAL_SIZE.search(base):
            base += f",S={physical}"
        base += f",W={size}"
    newName = f"{base}:{info}" if info or ":" in target else base
    try:
        directory.rename(fileName, cur, newName)
    except FileNotFoundError:
        return None
    return newName
