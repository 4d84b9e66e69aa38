"""
A session's view of a spool: the messages one scan found (L{SpoolScan}),
their uids and seen marks, where each is now, and, at QUIT, which messages
of a newer scan are the session's deleted and retrieved ones.

The spool is not locked during the session, so another program may rewrite
it (a mail reader saving flags, or removing messages) and move messages;
they are found again by uid, and, should their uids have changed (a
message with a forged C{X-UIDL:} arrived), by content digest: never by
position alone.
"""

from __future__ import annotations

import array
from typing import AbstractSet, Dict, Iterable, List, Optional, Set, Tuple

from popsrv.messages import MessageList
from popsrv.store.mbox.journal import Plan
from popsrv.store.mbox.parsing import SpoolScan
from popsrv.store.mbox.uids import assignUids

__all__ = ["Matcher", "Snapshot", "planRemoval"]


class Snapshot:
    """
    The messages of a spool at login.

    @ivar scan: the scan they come from.
    @ivar uids: their uids.
    @ivar seen: whether each was retrieved before (its C{Status:} says
        read, or an earlier session retrieved it), 0 or 1.
    """

    def __init__(self, scan: SpoolScan, recordedSeen: AbstractSet[str]) -> None:
        self.scan = scan
        self.uids = assignUids(scan.digests, scan.candidates)
        self.seen = bytearray(
            bool(read) or uid in recordedSeen for uid, read in zip(self.uids, scan.read)
        )
        self._indexes: Dict[str, int] = {uid: index for index, uid in enumerate(self.uids)}
        # Where each message is now: its separator, content and end.
        self.starts = array.array("q", scan.starts)
        self.contentStarts = array.array("q", scan.contentStarts)
        self.ends = array.array("q", scan.ends)

    def messages(self) -> MessageList:
        """
        The messages, for the protocol.
        """
        return MessageList(list(self.uids), array.array("q", self.scan.sizes), bytearray(self.seen))

    def index(self, uid: str) -> Optional[int]:
        """
        The number (from 0) of the message with C{uid}, or C{None}.
        """
        return self._indexes.get(uid)

    def moved(self, current: SpoolScan) -> None:
        """
        Find every message in a newer scan of the spool, and note where it
        is now (a message not found is gone: its start becomes -1).
        """
        matcher = Matcher(current)
        for index, uid in enumerate(self.uids):
            found = matcher.claim(uid, self.scan.digests[index])
            if found is None:
                self.starts[index] = -1
            else:
                self.starts[index] = current.starts[found]
                self.contentStarts[index] = current.contentStarts[found]
                self.ends[index] = current.ends[found]


class Matcher:
    """
    Finds the messages of a snapshot in a newer scan: by uid, if the
    message with that uid has the same content digest, else by the first
    message of that digest not found yet.  Each message of the scan is
    found at most once.
    """

    def __init__(self, current: SpoolScan) -> None:
        self.current = current
        self.uids = assignUids(current.digests, current.candidates)
        self._byUid = {uid: index for index, uid in enumerate(self.uids)}
        self._byDigest: Optional[Dict[bytes, List[int]]] = None
        self.claimed: Set[int] = set()

    def byUid(self, uid: str) -> Optional[int]:
        """
        The message of the scan whose uid is C{uid}, if any.
        """
        return self._byUid.get(uid)

    def find(self, uid: str, digest: bytes) -> Optional[int]:
        """
        The message of the scan that is the snapshot's message C{uid} of
        content C{digest}, without claiming it.
        """
        index = self._byUid.get(uid)
        if index is not None and index not in self.claimed and self.current.digests[index] == digest:
            return index
        if self._byDigest is None:
            self._byDigest = {}
            for number, each in enumerate(self.current.digests):
                self._byDigest.setdefault(each, []).append(number)
        for number in self._byDigest.get(digest, []):
            if number not in self.claimed:
                return number
        return None

    def claim(self, uid: str, digest: bytes) -> Optional[int]:
        """
        Find the message (see L{find}) and claim it.
        """
        index = self.find(uid, digest)
        if index is not None:
            self.claimed.add(index)
        return index


def planRemoval(
    snapshot: Snapshot, current: SpoolScan, deleted: Iterable[str], seen: Iterable[str],
    recordedSeen: AbstractSet[str], identity: Tuple[int, int], size: int,
) -> Tuple[Optional[Plan], Set[str], List[str]]:
    """
    What QUIT does to the spool as C{current} found it: remove the deleted
    messages, and record as seen the retrieved ones, and those recorded
    before that are still there.

    @param size: the spool's size now (octets after the scan are kept).
    @return: the rewrite (C{None} if nothing is to be removed), the uids
        to record as seen afterwards (the remaining messages' uids, as the
        next session computes them), and the deleted uids that were not
        found (removed by another program).
    """
    matcher = Matcher(current)
    removed: List[int] = []
    missing: List[str] = []
    for uid in sorted(deleted):
        index = snapshot.index(uid)
        found = None if index is None else matcher.claim(uid, snapshot.scan.digests[index])
        if found is None:
            missing.append(uid)
        else:
            removed.append(found)
    retrieved: Set[int] = set()
    for uid in seen:
        index = snapshot.index(uid)
        found = None if index is None else matcher.find(uid, snapshot.scan.digests[index])
        if found is not None:
            retrieved.add(found)
    for uid in recordedSeen:
        index = matcher.byUid(uid)
        if index is not None:
            retrieved.add(index)
    gone = set(removed)
    remaining = [index for index in range(len(current)) if index not in gone]
    newUids = assignUids([current.digests[index] for index in remaining],
                         [current.candidates[index] for index in remaining])
    record = {uid for uid, index in zip(newUids, remaining) if index in retrieved}
    if not removed:
        return None, record, missing
    removed.sort()
    start = current.starts[removed[0]]
    ranges: List[Tuple[int, int]] = []
    for index in removed:
        first, last = current.starts[index] - start, current.nextStart(index) - start
        if ranges and ranges[-1][1] == first:
            ranges[-1] = (ranges[-1][0], last)
        else:
            ranges.append((first, last))
    return Plan(identity, start, max(size, current.length), tuple(ranges)), record, missing
