"""
The scans of the spools this process served lately, so that a login to a
spool that has only grown since (delivery agents only append) reads what
was added, not the whole spool again: a login to a spool of 110 MB takes
milliseconds instead of 0.6 s.

A kept scan is used only if the spool is the same file (device and inode),
no shorter than when it was scanned, and its octets are unchanged at the
places a fingerprint samples (the first L{SAMPLE_OCTETS} of every message:
its separator line and the start of its headers; and the end of the one
before the last): a program that rewrote the spool (removing messages,
adding headers) moved what follows, which the samples see.  The last
message kept is read again with what follows it, as mail appended after a
last line without a line end joins it.  What no sample sees (the same
number of octets changed in place, in a message's body) the session still
notices: RETR checks every message against its digest (and a mismatch
drops the kept scan, so the next login reads the spool whole), and QUIT
always reads the whole spool again before it removes anything.  Sampling
10,000 messages takes a few milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from typing import Callable, List, Optional, Tuple

import attr

from popsrv.store.mbox.parsing import MAX_MESSAGES, SpoolScan, scanSpool

__all__ = ["KEPT_MESSAGES", "SAMPLE_OCTETS", "ScanCache", "scanWithCache"]

# How many messages this process keeps scans of, in all (about 100 octets
# each: 25 MB); the least recently used spools are dropped first.
KEPT_MESSAGES = 250_000
# How much of each message's start a fingerprint samples.
SAMPLE_OCTETS = 64


@attr.s(auto_attribs=True)
class _Kept:
    """
    A kept scan: the spool's identity, the scan, and its fingerprint.
    """

    identity: Tuple[int, int]
    scan: SpoolScan
    fingerprint: bytes


def _samples(scan: SpoolScan) -> List[Tuple[int, int]]:
    """
    Where the fingerprint of a scan reads: C{(offset, length)} pairs, all
    before the last message's start.
    """
    count = len(scan) - 1
    if count <= 0:
        return []
    starts = scan.starts
    places = [(starts[index], min(SAMPLE_OCTETS, starts[index + 1] - starts[index])) for index in range(count)]
    last = starts[count]
    places.append((max(0, last - SAMPLE_OCTETS), min(SAMPLE_OCTETS, last)))
    return places


def _fingerprint(fd: int, places: List[Tuple[int, int]]) -> bytes:
    """
    The digest of the spool's octets at C{places}.
    """
    digest = hashlib.blake2b(digest_size=16, person=b"popsrv-mbox-idx")
    for offset, length in places:
        digest.update(os.pread(fd, length, offset))
    return digest.digest()


def _joined(kept: SpoolScan, tail: SpoolScan) -> SpoolScan:
    """
    A kept scan without its last message, then a scan of the spool from
    that message's start.
    """
    scan = SpoolScan()
    count = len(kept) - 1
    scan.starts = kept.starts[:count] + tail.starts
    scan.contentStarts = kept.contentStarts[:count] + tail.contentStarts
    scan.ends = kept.ends[:count] + tail.ends
    scan.sizes = kept.sizes[:count] + tail.sizes
    scan.digests = kept.digests[:count] + tail.digests
    scan.candidates = kept.candidates[:count] + tail.candidates
    scan.read = kept.read[:count] + tail.read
    scan.length = tail.length
    scan.junk, scan.junkIsBlank = kept.junk, kept.junkIsBlank
    scan.more = tail.more
    return scan


class ScanCache:
    """
    The kept scans, by spool path, least recently used first; safe to use
    from several threads.
    """

    def __init__(self, capacity: int = KEPT_MESSAGES) -> None:
        self._capacity = capacity
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._messages = 0
        self._mutex = threading.Lock()

    def take(self, path: str) -> Optional[_Kept]:
        """
        Take (and forget) the scan kept for C{path}, if any.
        """
        with self._mutex:
            kept = self._kept.pop(path, None)
            if kept is not None:
                self._messages -= len(kept.scan)
            return kept

    def give(self, path: str, kept: _Kept) -> None:
        """
        Keep a scan, dropping the least recently used ones beyond the
        capacity.
        """
        if len(kept.scan) > self._capacity:
            return
        with self._mutex:
            previous = self._kept.pop(path, None)
            if previous is not None:
                self._messages -= len(previous.scan)
            self._kept[path] = kept
            self._messages += len(kept.scan)
            while self._messages > self._capacity:
                _, dropped = self._kept.popitem(last=False)
                self._messages -= len(dropped.scan)

    def forget(self, path: str) -> None:
        """
        Drop the scan kept for C{path} (popsrv rewrote the spool).
        """
        self.take(path)


def scanWithCache(
    cache: ScanCache, path: str, fd: int, identity: Tuple[int, int], pause: Callable[[], None],
) -> SpoolScan:
    """
    Scan the spool open as C{fd} (call under its locks), from the kept scan
    when it can be trusted (see the module's description), and keep the
    result.

    @param pause: called after each chunk read (to let other threads run).
    """
    kept = cache.take(path)
    size = os.fstat(fd).st_size
    scan: Optional[SpoolScan] = None
    if (kept is not None and kept.identity == identity and len(kept.scan) > 0 and size >= kept.scan.length
            and _fingerprint(fd, _samples(kept.scan)) == kept.fingerprint):
        tail = scanSpool(fd, pause, start=kept.scan.starts[len(kept.scan) - 1],
                         limit=max(1, MAX_MESSAGES - len(kept.scan) + 1))
        if len(tail) > 0 and tail.junk == 0:
            scan = _joined(kept.scan, tail)
    if scan is None:
        scan = scanSpool(fd, pause)
    cache.give(path, _Kept(identity, scan, _fingerprint(fd, _samples(scan))))
    return scan

