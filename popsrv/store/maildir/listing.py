"""
The snapshot of a Maildir's C{cur/}: its file names parsed into the numbered
list of messages a POP3 session sees.

Parsing a name (its delivery time for the order, its uid, its sizes and
flags) costs a few microseconds, which adds up to a second for 100,000
messages.  A L{CurListing} keeps what it parsed, so the next snapshot of
the same Maildir parses only the names that are new since; L{ListingCache}
keeps the listings of the Maildirs a process served recently.  Nothing
is trusted without looking: every snapshot lists the directory again, and a
name that appeared, vanished or changed (new flags, new size fields) is a
different name.
"""

from __future__ import annotations

import array
import collections
import hashlib
import heapq
import re
import threading
from typing import Callable, Iterable, Optional, Tuple

from popsrv.messages import MessageList

# How names of cur/ sort: delivery time, microseconds, the unique part, the base.
OrderKey = Tuple[int, int, str, str]
# A parsed name of cur/: its sort key, base name, uid, POP3 size, seen flag.
ParsedName = Tuple[OrderKey, str, str, int, bool]

__all__ = ["CurListing", "ListingCache", "orderKey", "splitName", "uidFor", "uniquePart"]

_SIZE_FIELDS = re.compile(r",[SW]=\d+")
_VIRTUAL_SIZE = re.compile(r",W=(\d+)")
_DELIVERY_TIME = re.compile(r"(\d+)(?:\.M(\d+))?")
_UID_OCTETS = re.compile(r"[\x21-\x7e]{1,70}")


def splitName(name: str) -> tuple[str, str]:
    """
    Split a Maildir file name into its base name and its info part (without
    the colon; empty if there is none).
    """
    base, _, info = name.partition(":")
    return base, info


def hashedUid(text: str) -> str:
    """
    A stable uid made from any text: 40 hex digits.
    """
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def uniquePart(base: str) -> str:
    """
    A Maildir base name without its size fields (C{,S=} and C{,W=}, which
    tools add and fix): what names one message whatever they record.
    """
    return _SIZE_FIELDS.sub("", base) if "=" in base else base


def uidFor(base: str) -> str:
    """
    Return the POP3 unique id of a message from its Maildir base name: its
    L{uniquePart}, or a hash of that if it is not 1 to 70 printable ASCII
    characters.
    """
    uid = uniquePart(base)
    return uid if _UID_OCTETS.fullmatch(uid) else hashedUid(uid)


def orderKey(name: str) -> tuple[int, int, str, str]:
    """
    Sort key of a Maildir name: delivery time first (seconds, then the
    microseconds of a C{<seconds>.M<usec>...} name, which MDAs do not always
    zero-pad), then the unique name without size fields, then the base name;
    never the flags, so the order does not change when they do.
    """
    base = splitName(name)[0]
    unique = _SIZE_FIELDS.sub("", base)
    match = _DELIVERY_TIME.match(unique)
    if match is None:
        return (0, 0, unique, base)
    return (int(match.group(1)), int(match.group(2) or 0), unique, base)


def recordedSize(base: str) -> Optional[int]:
    """
    The POP3 size a base name records in its C{,W=} field, or C{None}.
    """
    match = _VIRTUAL_SIZE.search(base)
    return None if match is None else int(match.group(1))


def _parse(fileName: str) -> Optional[ParsedName]:
    """
    Parse a name of C{cur/}: its sort key, base name, uid, POP3 size and
    seen flag, or C{None} if it records no POP3 size.

    (A plain tuple of plain values: the garbage collector stops tracking it
    at its first collection, so keeping 100,000 of them costs nothing.)
    """
    base, flags = splitName(fileName)
    size = recordedSize(base)
    if size is None:
        return None
    seen = flags.startswith("2,") and "S" in flags[2:]
    return (orderKey(fileName), base, uidFor(base), size, seen)


# Sorting or merging this many names holds the GIL for a few milliseconds.
SORT_STEP = 4096


def _sortedInSteps(names: list[str], key: Callable[[str], OrderKey], pause: Callable[[], None]) -> list[str]:
    """
    Sort names in runs of L{SORT_STEP}, pausing after each, and merge the
    runs: one sort of 100,000 names would hold the GIL for a tenth of a
    second, and stall the reactor thread that long.
    """
    if len(names) <= SORT_STEP:
        return sorted(names, key=key)
    runs = []
    for start in range(0, len(names), SORT_STEP):
        runs.append(sorted(names[start:start + SORT_STEP], key=key))
        pause()
    return _mergedInSteps(runs, key, pause)


def _mergedInSteps(runs: list[list[str]], key: Callable[[str], OrderKey], pause: Callable[[], None]) -> list[str]:
    """
    Merge sorted runs of names, pausing every L{SORT_STEP} names.
    """
    merged: list[str] = []
    for name in heapq.merge(*runs, key=key):
        merged.append(name)
        if len(merged) % SORT_STEP == 0:
            pause()
    return merged


class CurListing:
    """
    The parsed listing of one Maildir's C{cur/}, brought up to date from
    the directory's current names by L{update}.

    @ivar messages: the snapshot of the last L{update}, in POP3 order; never
        changed afterwards (the next update makes a new list), so sessions
        may keep it.
    @ivar fileNames: the file name of each message of L{messages}, by uid;
        never changed either.
    @ivar signature: what identifies the state of C{cur/} this listing is
        known to be complete for (its owner's to set), or C{None}.
    """

    def __init__(self) -> None:
        self.signature: Optional[Tuple[int, int, int, int]] = None
        self._parsed: dict[str, ParsedName] = {}
        self._order: list[str] = []
        self.messages = MessageList([], array.array("q"), bytearray())
        self.fileNames: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._parsed)

    def isEmpty(self) -> bool:
        """
        Whether nothing was parsed yet (the first listing reads every name).
        """
        return not self._parsed

    def update(
        self,
        names: list[str],
        withSize: Callable[[str], Optional[str]],
        account: Callable[[], None] = lambda: None,
        pause: Callable[[], None] = lambda: None,
    ) -> None:
        """
        Bring the listing up to date with C{names}, the names of the regular
        files now in C{cur/} (each once; the caller lists only those).

        @param withSize: called with each name that records no POP3 size;
            returns the file's new name, which does, or C{None} if the
            message is gone.
        @param account: called for each name parsed (to pace CPU work).
        @param pause: called between the steps of sorting many names (to
            let other threads run).
        """
        parsed = self._parsed
        fresh = [name for name in names if name not in parsed]
        known = len(names) - len(fresh)
        if not fresh and known == len(parsed):
            return
        if known != len(parsed):
            present = set(names)
            self._parsed = parsed = {name: p for name, p in parsed.items() if name in present}
        added = []
        for name in fresh:
            account()
            entry = _parse(name)
            if entry is None:
                renamed = withSize(name)
                if renamed is None:
                    continue
                entry = _parse(renamed)
                if entry is None:
                    continue
                name = renamed
            parsed[name] = entry
            added.append(name)
        def key(name: str) -> OrderKey:
            return parsed[name][0]

        added = _sortedInSteps(added, key, pause)
        kept = [name for name in self._order if name in parsed]
        if len(kept) <= SORT_STEP or len(added) <= SORT_STEP:
            # Two sorted runs, one short: the sort merges them at once.
            kept.extend(added)
            kept.sort(key=key)
            self._order = kept
        else:
            self._order = _mergedInSteps([kept, added], key, pause)
        self._publish(pause)

    def _publish(self, pause: Callable[[], None]) -> None:
        """
        Build the snapshot from the parsed names, giving each of the names
        that would share a uid a hash of its own instead.
        """
        parsed, order = self._parsed, self._order
        uids: list[str] = []
        sizes = array.array("q")
        seen = bytearray()
        for start in range(0, len(order), SORT_STEP):
            entries = [parsed[name] for name in order[start:start + SORT_STEP]]
            uids.extend([entry[2] for entry in entries])
            sizes.extend([entry[3] for entry in entries])
            seen.extend([entry[4] for entry in entries])
            pause()
        if len(set(uids)) < len(uids):
            # Names alike but for their size fields (or, against the Maildir
            # rules, alike but for their flags) would share a uid: none of
            # them may ever show another's.
            counts = collections.Counter(uids)
            bases = collections.Counter(parsed[name][1] for name in order)
            for index, name in enumerate(order):
                if counts[uids[index]] > 1:
                    base = parsed[name][1]
                    uids[index] = hashedUid(base if bases[base] == 1 else name)
        fileNames: dict[str, str] = {}
        for start in range(0, len(order), SORT_STEP):
            fileNames.update(zip(uids[start:start + SORT_STEP], order[start:start + SORT_STEP]))
            pause()
        self.messages = MessageList(uids, sizes, seen)
        self.fileNames = fileNames


class ListingCache:
    """
    The listings of the Maildirs a process served recently, so that their
    next snapshot parses only what changed.

    A listing is taken out (L{take}) by the one session that holds the
    Maildir's lock, and handed back (L{give}) when it is up to date, so no
    two threads ever work on the same one.  Listings of fewer than
    C{minimum} messages are not kept; beyond C{capacity} in all (a listing
    counts its messages, plus one), the least recently used are dropped.
    """

    def __init__(self, capacity: int = 250_000, minimum: int = 0) -> None:
        self.capacity = capacity
        self.minimum = minimum
        self._listings: collections.OrderedDict[str, CurListing] = collections.OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def take(self, key: str) -> CurListing:
        """
        Take the listing kept for C{key}, or a new empty one.
        """
        with self._lock:
            listing = self._listings.pop(key, None)
            if listing is None:
                return CurListing()
            self._size -= len(listing) + 1
            return listing

    def give(self, key: str, listing: CurListing) -> None:
        """
        Keep an up-to-date listing for the next snapshot of C{key}, if it is
        worth keeping.
        """
        size = len(listing) + 1
        if size <= self.minimum or size > self.capacity:
            return
        with self._lock:
            previous = self._listings.pop(key, None)
            if previous is not None:
                self._size -= len(previous) + 1
            self._listings[key] = listing
            self._size += size
            while self._size > self.capacity:
                _, dropped = self._listings.popitem(last=False)
                self._size -= len(dropped) + 1

    def keys(self) -> Iterable[str]:
        """
        The keys of the kept listings, least recently used first.
        """
        with self._lock:
            return list(self._listings)
