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
import itertools
import re
import threading
from typing import Callable, Iterable, Optional, Tuple

from popsrv.messages import MessageList
from popsrv.store.maildir.intake import SIZE_DIGITS, recordedSize, splitName

# How names of cur/ sort: delivery time, microseconds, the unique part, the base.
OrderKey = Tuple[int, int, str, str]
# A parsed name of cur/: its sort key (see _sortKey), base name, uid, POP3
# size, seen flag and the name itself.
ParsedName = Tuple[str, str, str, int, bool, str]

__all__ = ["CurListing", "ListingCache", "orderKey", "recordedSize", "splitName", "uidFor", "uniquePart"]

_SIZE_FIELDS = re.compile(r",[SW]=\d+")
_DELIVERY_TIME = re.compile(r"(\d+)(?:\.M(\d+))?")
_UID_OCTETS = re.compile(r"[\x21-\x7e]{1,70}")
# The usual name of cur/, parsed by one match: a unique part of printable
# ASCII without "," or ":" (a delivery time and microseconds first, if
# any, without their leading zeros), then ",S=" (optional) and ",W=", which
# end the base name, then the info part (optional; its flags if it is of
# the "2," kind).  Any other name is parsed by the general rules (which
# give the same for these: a test checks it).  No file name holds a NUL.
# Each part is matched once, never tried again at another length (atomic
# groups, possessive repeats): the unique part's characters take any digit
# the delivery time would give back, so trying again never helps a match,
# and runs of zeros and digits made it take seconds (catastrophic
# backtracking) on names a user can make.
_USUAL = (
    r"(?P<base>(?P<unique>(?>(?:(?>0*(?=[0-9]))(?P<seconds>[0-9]++)"
    r"(?:\.M(?>0*(?=[0-9]))(?P<micro>[0-9]++))?)?)[\x21-\x2b\x2d-\x39\x3b-\x7e]*+)"
    r"(?:,S=[0-9]++)?,W=(?P<size>[0-9]++))(?::(?:2,(?P<flags>[^\0]*+)|[^\0]*+))?"
)
_USUAL_NAME = re.compile(_USUAL)
# Names, each ended by a NUL: a usual one, or any other.
_NAMES = re.compile(f"(?:{_USUAL}|[^\\0]*+)\\0")
# Longest uid taken as it is.
_UID_LENGTH = 70
# The sort key made of its fields (see _sortKey).
_SORT_KEY = "{}{}{}{}\0{}\0{}\0{}".format


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


def orderKey(name: str) -> OrderKey:
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


def _sortKey(seconds: str, micro: str, unique: str, base: str, name: str) -> str:
    """
    A string that sorts as the name's L{orderKey}, then the whole name (so
    that no two names of a directory tie): the delivery time and the
    microseconds as digits without leading zeros, each after its length
    (a longer number is a bigger one), and the text fields each ended by
    a NUL, which sorts before any character of a file name.

    Strings of Latin-1 characters compare at C{memcmp} speed, tuples of
    numbers and strings field by field: this sorts 100,000 names in a
    third of the time.
    """
    return _SORT_KEY(chr(len(seconds)), seconds, chr(len(micro)), micro, unique, base, name)


def _parseAnyName(fileName: str) -> Optional[ParsedName]:
    """
    Parse a name of C{cur/} by the general rules (L{orderKey}, L{uidFor},
    L{recordedSize}); see L{_parse}.
    """
    base, flags = splitName(fileName)
    size = recordedSize(base)
    if size is None:
        return None
    seen = flags.startswith("2,") and "S" in flags[2:]
    seconds, micro, unique, _ = orderKey(fileName)
    return (_sortKey(str(seconds), str(micro), unique, base, fileName), base, uidFor(base), size, seen, fileName)


def _parse(fileName: str) -> Optional[ParsedName]:
    """
    Parse a name of C{cur/}: its sort key, base name, uid, POP3 size and
    seen flag, or C{None} if it records no POP3 size.

    The usual name takes one match of L{_USUAL_NAME} (a microsecond
    instead of several); others are parsed by the general rules.

    (A plain tuple of plain values: the garbage collector stops tracking it
    at its first collection, so keeping 100,000 of them costs nothing.)
    """
    match = _USUAL_NAME.fullmatch(fileName)
    if match is None:
        return _parseAnyName(fileName)
    base, unique, seconds, micro, size, flags = match.groups()
    if not 0 < len(unique) <= _UID_LENGTH or len(size) > SIZE_DIGITS:
        return _parseAnyName(fileName)
    seen = flags is not None and "S" in flags
    return (_sortKey(seconds or "0", micro or "0", unique, base, fileName), base, unique, int(size), seen, fileName)


class _Columns:
    """
    Parsed names of C{cur/}, by column: the sort key, name, uid, POP3 size
    and seen flag of each (a handful of objects for the garbage collector,
    however many names).
    """

    __slots__ = ("keys", "names", "uids", "sizes", "seen")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.names: list[str] = []
        self.uids: list[str] = []
        self.sizes = array.array("q")
        self.seen = bytearray()

    def __len__(self) -> int:
        return len(self.names)

    def add(self, entry: ParsedName) -> None:
        """
        Add one parsed name.
        """
        key, _, uid, size, seen, name = entry
        self.keys.append(key)
        self.names.append(name)
        self.uids.append(uid)
        self.sizes.append(size)
        self.seen.append(seen)

    @classmethod
    def joined(cls, first: _Columns, second: _Columns) -> _Columns:
        """
        The parsed names of C{first}, then those of C{second}.
        """
        both = cls()
        both.keys = first.keys + second.keys
        both.names = first.names + second.names
        both.uids = first.uids + second.uids
        both.sizes = first.sizes + second.sizes
        both.seen = first.seen + second.seen
        return both

    def selected(self, selectors: Iterable[bool]) -> _Columns:
        """
        The parsed names whose selector is true, in the same order.
        """
        chosen = bytes(selectors)
        taken = _Columns()
        taken.keys = list(itertools.compress(self.keys, chosen))
        taken.names = list(itertools.compress(self.names, chosen))
        taken.uids = list(itertools.compress(self.uids, chosen))
        taken.sizes = array.array("q", itertools.compress(self.sizes, chosen))
        taken.seen = bytearray(itertools.compress(self.seen, chosen))
        return taken

    def permuted(self, order: list[int], pause: Callable[[], None]) -> _Columns:
        """
        The parsed names in C{order} (their indexes), a step at a time.
        """
        taken = _Columns()
        for start in range(0, len(order), SORT_STEP):
            step = order[start:start + SORT_STEP]
            taken.keys += map(self.keys.__getitem__, step)
            taken.names += map(self.names.__getitem__, step)
            taken.uids += map(self.uids.__getitem__, step)
            taken.sizes.extend(map(self.sizes.__getitem__, step))
            taken.seen.extend(map(self.seen.__getitem__, step))
            pause()
        return taken


def _parseColumns(names: list[str], columns: _Columns) -> list[str]:
    """
    Parse names of C{cur/} as L{_parse} does, into C{columns}; return the
    names that record no POP3 size.

    If every name is a usual one, each column is made by one call into C
    for them all (from one search of the names put end to end), in half
    the time of a step per name.
    """
    if not names:
        return []
    found = _NAMES.findall("\0".join(names) + "\0")
    bases, uniques, seconds, micros, sizes, flags = zip(*found)
    usual = "" not in bases and max(map(len, sizes)) <= SIZE_DIGITS
    if usual and min(map(len, uniques)) > 0 and max(map(len, uniques)) <= _UID_LENGTH:
        if "" in seconds:
            seconds = tuple([number or "0" for number in seconds])
        if "" in micros:
            micros = tuple([number or "0" for number in micros])
        columns.keys += map(
            _SORT_KEY, map(chr, map(len, seconds)), seconds, map(chr, map(len, micros)), micros, uniques, bases, names
        )
        columns.names += names
        columns.uids += uniques
        columns.sizes.extend(map(int, sizes))
        columns.seen.extend(map(str.__contains__, flags, itertools.repeat("S")))
        return []
    unsized = []
    for name in names:
        entry = _parse(name)
        if entry is None:
            unsized.append(name)
        else:
            columns.add(entry)
    return unsized


# Sorting or merging this many names holds the GIL for a few milliseconds.
SORT_STEP = 4096
# Names parsed between two calls of an update's account.
ACCOUNT_STEP = 256
# A listing of at least this many names keeps the set of them between
# updates.
KEPT_NAME_SET = 1024


def _sortedInSteps(keys: list[str], first: int, pause: Callable[[], None]) -> list[int]:
    """
    The indexes of C{keys} in the order of their keys, when those before
    C{first} are in order already: the others are sorted in runs of
    L{SORT_STEP}, pausing after each, and the runs merged.  One sort of
    100,000 keys would hold the GIL for tens of milliseconds, and stall the
    reactor thread that long.

    The keys are strings of Latin-1 characters, as a rule, which the sort
    compares at C{memcmp} speed.
    """
    byKey = keys.__getitem__
    runs = [list(range(first))] if first else []
    for start in range(first, len(keys), SORT_STEP):
        runs.append(sorted(range(start, min(start + SORT_STEP, len(keys))), key=byKey))
        pause()
    while len(runs) > 1:
        # The sort of two sorted runs put end to end merges them, in C.
        merged = []
        for index in range(0, len(runs) - 1, 2):
            pair = runs[index] + runs[index + 1]
            pair.sort(key=byKey)
            merged.append(pair)
            pause()
        if len(runs) % 2:
            merged.append(runs[-1])
        runs = merged
    return runs[0] if runs else []


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
        # The parsed names, in POP3 order.
        self._parsed = _Columns()
        # Their names, as a set: made when an update first needs it.
        self._known: Optional[set[str]] = None
        # Whether an update was made, and whether the parsed names were
        # dropped since (a small listing keeps only its snapshot: parsing
        # its names again costs less than keeping them in every listing
        # kept).
        self._listed = False
        self._dropped = False
        self.messages = MessageList([], array.array("q"), bytearray())
        self.fileNames: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.messages)

    def isEmpty(self) -> bool:
        """
        Whether nothing was listed yet (the first listing reads every name).
        """
        return not self._listed

    def update(
        self,
        names: list[str],
        withSize: Callable[[str], Optional[str]],
        account: Callable[[int], None] = lambda count: None,
        pause: Callable[[], None] = lambda: None,
    ) -> None:
        """
        Bring the listing up to date with C{names}, the names of the regular
        files now in C{cur/} (each once; the caller lists only those).

        @param withSize: called with each name that records no POP3 size;
            returns the file's new name, which does, or C{None} if the
            message is gone.
        @param account: called with a number of names about to be parsed,
            for every L{ACCOUNT_STEP} of them (to pace CPU work).
        @param pause: called between the steps of sorting many names (to
            let other threads run).
        """
        dropped, self._dropped = self._dropped, False
        self._listed = True
        parsed = self._parsed
        known = self._known
        if parsed.names:
            if known is None:
                known = set(parsed.names)
            fresh = list(itertools.filterfalse(known.__contains__, names))
        else:
            known, fresh = set(), names
        kept = len(names) - len(fresh)
        if not fresh and kept == len(parsed) and not dropped:
            # (A small listing's set is made again, at less cost than
            # keeping it in every kept listing.)
            self._known = known if len(known) >= KEPT_NAME_SET else None
            return
        present: Optional[set[str]] = None
        if kept != len(parsed):
            present = set(names)
            parsed = parsed.selected(map(present.__contains__, parsed.names))
        # The columns of the snapshot that sessions hold are never changed:
        # the fresh names are parsed apart, and both put in order anew.
        added = _Columns()
        for start in range(0, len(fresh), ACCOUNT_STEP):
            batch = fresh[start:start + ACCOUNT_STEP]
            account(len(batch))
            for name in _parseColumns(batch, added):
                renamed = withSize(name)
                if renamed is None:
                    continue
                if present is None:
                    present = set(names)
                # Measured, it may take the name of a file listed as well
                # (which the rename replaced): one message, not two.
                if renamed in present:
                    continue
                entry = _parse(renamed)
                if entry is not None:
                    present.add(renamed)
                    added.add(entry)
        everything = _Columns.joined(parsed, added)
        self._parsed = everything.permuted(_sortedInSteps(everything.keys, len(parsed), pause), pause)
        # Made again by the next update that needs it: most never do (the
        # next session finds cur/ unchanged, or not at all).
        self._known = None
        self._publish(pause)
        if len(self._parsed) < KEPT_NAME_SET:
            self._parsed = _Columns()
            self._dropped = True

    def _publish(self, pause: Callable[[], None]) -> None:
        """
        Build the snapshot from the parsed names, giving each of the names
        that would share a uid a hash of its own instead.
        """
        parsed = self._parsed
        uids, names = parsed.uids, parsed.names
        fileNames: dict[str, str] = {}
        for start in range(0, len(uids), SORT_STEP):
            fileNames.update(zip(uids[start:start + SORT_STEP], names[start:start + SORT_STEP]))
            pause()
        if len(fileNames) < len(uids):
            # Names alike but for their size fields (or, against the Maildir
            # rules, alike but for their flags) would share a uid: none of
            # them may ever show another's.
            uids = list(uids)
            counts = collections.Counter(uids)
            bases = collections.Counter(splitName(name)[0] for name in names)
            for index, name in enumerate(names):
                if counts[uids[index]] > 1:
                    base = splitName(name)[0]
                    uids[index] = hashedUid(base if bases[base] == 1 else name)
            fileNames = dict(zip(uids, names))
        self.messages = MessageList(uids, parsed.sizes, parsed.seen)
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
