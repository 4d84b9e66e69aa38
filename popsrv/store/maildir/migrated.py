"""
Serving a Maildir moved from Dovecot or Courier with the UIDLs its old
server showed: finding that server's file in the Maildir, reading it
(bounded, only where blocking work may be done), keeping what was read,
and serving snapshots of C{cur/} with it (see
L{popsrv.store.maildir.olduids}).

The file is looked for in the Maildir itself, opened through the
descriptor opened at lock time, without following a link or blocking, and
used only if it is a regular file of at most L{MAX_FILE_SIZE} octets.  If
both are there, C{dovecot-uidlist} is used, not C{courierpop3dsizelist}:
Dovecot is where Courier sites moved (it ships a script that turns
Courier's files into a C{dovecot-uidlist}, keeping Courier's UIDLs), never
the other way, so a Courier file beside Dovecot's is left from before, and
the UIDLs clients hold last came from Dovecot.

What a file says is kept per process, by the file's identity (device,
inode, modification time, size) and the UIDL format, so a big one is read
once, not at every login; and so is the last snapshot served with it, per
Maildir, until C{cur/} changes.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import BinaryIO, Callable, Dict, Generic, Mapping, Optional, Sequence, Tuple, TypeVar

from twisted.logger import Logger

from popsrv.messages import MessageList
from popsrv.store.maildir.courier import COURIER_SIZELIST, readSizelist
from popsrv.store.maildir.directory import Directory, NotAFile
from popsrv.store.maildir.dovecot import DOVECOT_UIDLIST, readUidlist
from popsrv.store.maildir.olduids import Note, OldUids
from popsrv.store.uidlformat import UidlFormat

__all__ = ["MAX_FILE_SIZE", "MAX_LINES", "SERVED", "SOURCES", "TABLES", "Found", "NeedsReading", "findOldUids",
           "logFindings", "serveWithOldUids"]

# A dovecot-uidlist of 100,000 messages is about 10 MB, read in about
# 0.6 s (benchmarks/migrated.py), taking some 60 MB while it is parsed and
# 27 MB kept: 32 MiB holds some 330,000 messages, more than a kept listing
# (see CAPACITY).
MAX_FILE_SIZE = 32 * 2**20
# What parsing costs is per line (some 400 octets and 7 microseconds
# each), not per octet: 30 MB of short lines (2 million of 15 octets) would
# take 750 MB and 14 s, at every login (too many to keep).  A file of more
# lines than 32 MiB of Dovecot's own hold is refused.
MAX_LINES = 330_000
READ_CHUNK = 2**20
# The files looked for, in the order they are looked for.
SOURCES = (DOVECOT_UIDLIST, COURIER_SIZELIST)
# How many records (and messages) the kept files (and snapshots) may hold in
# all, in each process: as many as the kept listings of cur/
# (popsrv.store.maildir.listing.ListingCache), at about 270 (and 60)
# octets each.
CAPACITY = 250_000

log = Logger()

_K = TypeVar("_K")
_V = TypeVar("_V")


class NeedsReading(Exception):
    """
    The file of old UIDLs is not known yet and must be read, which the
    caller forbade (it is blocking work of unbounded cost).
    """


class Found:
    """
    The old UIDLs found for a Maildir.

    @ivar oldUids: what the file says (or why it is refused).
    @ivar fresh: whether it was read for this snapshot (rather than kept
        from an earlier one).
    """

    def __init__(self, oldUids: OldUids, fresh: bool) -> None:
        self.oldUids = oldUids
        self.fresh = fresh


class _Kept(Generic[_K, _V]):
    """
    Values kept by key, the least recently used dropped first beyond
    C{capacity}; each value counts as its C{size}.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._values: collections.OrderedDict[_K, Tuple[_V, int]] = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: _K) -> Optional[_V]:
        """The value kept for C{key}, or C{None}."""
        with self._lock:
            entry = self._values.get(key)
            if entry is None:
                return None
            self._values.move_to_end(key)
            return entry[0]

    def put(self, key: _K, value: _V, size: int) -> None:
        """Keep C{value} for C{key}, unless it is bigger than the capacity."""
        with self._lock:
            previous = self._values.pop(key, None)
            if previous is not None:
                self._size -= previous[1]
            if size > self.capacity:
                return
            self._values[key] = (value, size)
            self._size += size
            while self._size > self.capacity:
                _, (_, dropped) = self._values.popitem(last=False)
                self._size -= dropped

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._values.clear()
            self._size = 0


# What each file of old UIDLs says, by identity and format.
TABLES: _Kept[Tuple[str, int, int, int, int, str], OldUids] = _Kept(CAPACITY)
# The last snapshot served with old UIDLs, by Maildir: the snapshot and
# file it was made from, and what was served.
SERVED: _Kept[str, Tuple[MessageList, OldUids, MessageList, Dict[str, str]]] = _Kept(CAPACITY)


def _read(opened: BinaryIO, fileName: str, uidlFormat: UidlFormat, pause: Callable[[], None]) -> OldUids:
    """
    Read and parse an open file of old UIDLs, at most L{MAX_FILE_SIZE}
    octets of it.
    """
    chunks = []
    size = 0
    while size <= MAX_FILE_SIZE:
        chunk = opened.read(READ_CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        pause()
    if size > MAX_FILE_SIZE:
        return OldUids(fileName, refused=f"it is larger than {MAX_FILE_SIZE} octets")
    data = b"".join(chunks)
    if data.count(b"\n") > MAX_LINES:
        return OldUids(fileName, refused=f"it has more than {MAX_LINES} lines")
    if fileName == DOVECOT_UIDLIST:
        return readUidlist(data, uidlFormat, pause)
    return readSizelist(data, pause)


def findOldUids(
    top: Directory, uidlFormat: UidlFormat, mayRead: bool = True, pause: Callable[[], None] = lambda: None,
) -> Optional[Found]:
    """
    Find the old UIDLs of a Maildir: what its C{dovecot-uidlist} says, else
    what its C{courierpop3dsizelist} says, else C{None}.

    @param top: the Maildir's own directory, as opened at lock time.
    @param uidlFormat: Dovecot's C{pop3_uidl_format} of the old server.
    @param mayRead: whether a file not kept from an earlier read may be
        read now; if not, and one must be, L{NeedsReading} is raised.
    @param pause: called now and then while reading (to let other threads
        run).
    """
    for fileName in SOURCES:
        try:
            opened = top.openMessage(fileName)
        except FileNotFoundError:
            continue
        except NotAFile:
            return Found(OldUids(fileName, refused="it is not a regular file (a symbolic link, a FIFO...)"), True)
        except OSError as error:
            return Found(OldUids(fileName, refused=f"it cannot be opened: {error.strerror}"), True)
        with opened:
            status = os.fstat(opened.fileno())
            formatText = uidlFormat.text if fileName == DOVECOT_UIDLIST else ""
            key = (fileName, status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size, formatText)
            kept = TABLES.get(key)
            if kept is not None:
                return Found(kept, False)
            if not mayRead:
                raise NeedsReading(fileName)
            if status.st_size > MAX_FILE_SIZE:
                oldUids = OldUids(fileName, refused=f"it is larger than {MAX_FILE_SIZE} octets")
            else:
                try:
                    oldUids = _read(opened, fileName, uidlFormat, pause)
                except OSError as error:
                    return Found(OldUids(fileName, refused=f"it cannot be read: {error.strerror}"), True)
        TABLES.put(key, oldUids, len(oldUids) + 1)
        return Found(oldUids, True)
    return None


def serveWithOldUids(
    key: str, oldUids: OldUids, messages: MessageList, fileNames: Mapping[str, str],
    pause: Callable[[], None] = lambda: None,
) -> Tuple[MessageList, Mapping[str, str], Sequence[Note], Optional[int]]:
    """
    Serve a snapshot of C{cur/} with old UIDLs (see L{OldUids.serve}),
    reusing the last one served for that Maildir if neither the snapshot
    nor the file changed since.

    @param key: what names the Maildir.
    @return: the snapshot as served, the file name of each of its messages
        by uid, notes for the log, and how many messages kept their old
        UIDL (C{None} if the last snapshot served was reused: all was said
        then).
    """
    if oldUids.refused is not None:
        return messages, fileNames, [], None
    kept = SERVED.get(key)
    if kept is not None and kept[0] is messages and kept[1] is oldUids:
        return kept[2], kept[3], [], None
    served, names, notes, matched = oldUids.serve(messages, fileNames, pause)
    SERVED.put(key, (messages, oldUids, served, names), len(served) + 1)
    return served, names, notes, matched


def logFindings(path: str, found: Found, notes: Sequence[Note], matched: Optional[int], total: int) -> None:
    """
    Log, for the operator, what a snapshot found: whether a file of old
    UIDLs is refused, and what was wrong in it (only once, when it is read),
    the notes of serving a snapshot with it, and how many messages kept
    their old UIDLs.
    """
    oldUids = found.oldUids
    where = os.path.join(path, oldUids.source)
    if found.fresh and oldUids.refused is not None:
        log.warn(
            "{file} is not used (its messages get popsrv's own UIDLs): {why}",
            file=where, why=oldUids.refused, event="uidlist-refused",
        )
    for note in [*(oldUids.notes if found.fresh else []), *notes]:
        log.warn(
            "{file}: {count} {what}: {examples}",
            file=where, count=note.total, what=note.text, examples=list(note.examples), event=note.event,
        )
    if found.fresh and matched is not None:
        log.info(
            "{path}: {matched} of {total} messages keep the UIDLs of {source}",
            path=path, matched=matched, total=total, source=oldUids.source, event="old-uidls",
        )
