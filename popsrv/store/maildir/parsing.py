"""
Parsing the names of a Maildir's C{cur/}: the delivery time (for the
order), uid, POP3 size and seen flag of each, into columns, and putting
them in POP3 order.

This module imports nothing from popsrv but L{popsrv.store.maildir.intake}
(which imports nothing from popsrv either), so that a helper process can
run it without loading the server (see L{popsrv.store.maildir.helper}).
"""

from __future__ import annotations

import array
import bisect
import hashlib
import itertools
import operator
import re
from typing import Callable, Iterable, Optional, Sequence, Tuple, TypeVar

from popsrv.store.maildir import intake
from popsrv.store.maildir.intake import SIZE_DIGITS, recordedSize, splitName

_T = TypeVar("_T")

__all__ = [
    "CODE_DIGEST", "SORT_STEP", "Columns", "OrderKey", "ParsedName", "hashedUid", "inOrder", "inTimeOrder",
    "keptIndexes", "mergedInSteps", "orderKey", "parseAnyName", "parseColumns", "parseInSteps", "parseName",
    "sortKey",
    "sortedInSteps", "tiesBroken", "timeKey", "uidFor", "uniquePart",
]

# How names of cur/ sort: delivery time, microseconds, the unique part, the base.
OrderKey = Tuple[int, int, str, str]
# A parsed name of cur/: its delivery time (see timeKey), base name, uid,
# POP3 size, seen flag and the name itself.
ParsedName = Tuple[int, str, str, int, bool, str]


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
# The sort key made of its fields (see sortKey).
_SORT_KEY = "{}{}{}{}\0{}\0{}\0{}".format
# The delivery time as one number (see timeKey): digits of the seconds and
# the microseconds taken as they are, and the caps of each.
_SECONDS_DIGITS = 12
_MICRO_DIGITS = 6
_SECONDS_CAP: int = 10**_SECONDS_DIGITS - 1
_MICRO_CAP: int = 10**_MICRO_DIGITS - 1


def _codeDigest() -> str:
    """
    A digest of the code that parses names (this module and
    L{popsrv.store.maildir.intake}) as this process loaded it.  A helper
    process runs the files on disk, which an upgrade may have changed
    under a running server: its results are used only if the two agree.
    """
    digest = hashlib.sha256()
    try:
        for path in (__file__, intake.__file__):
            with open(path, "rb") as code:
                digest.update(code.read())
    except OSError:
        # (Not files of their own, as in a zip: no helper can load them
        # either, and the server does the work itself.)
        return "unreadable"
    return digest.hexdigest()[:16]


CODE_DIGEST = _codeDigest()


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


def timeKey(seconds: int, micro: int) -> int:
    """
    A name's delivery time as one number that sorts as the pair (seconds,
    microseconds) does: the seconds times a million plus the microseconds,
    capped so that it fits in 64 bits (microseconds at 999,999, seconds
    beyond 10**12 - 1 at the greatest time).  Names whose times tie (at a
    cap too) are put in order by L{sortKey}.

    Numbers are what most names of a directory differ by, and sorting
    100,000 of them costs less than sorting their whole sort keys, which
    a listing need not keep.
    """
    if seconds > _SECONDS_CAP:
        return _SECONDS_CAP * (_MICRO_CAP + 1) + _MICRO_CAP
    return seconds * (_MICRO_CAP + 1) + min(micro, _MICRO_CAP)


def sortKey(name: str) -> str:
    """
    A string that sorts as the name's L{orderKey}, then the whole name (so
    that no two names of a directory tie): the delivery time and the
    microseconds as digits without leading zeros, each after its length
    (a longer number is a bigger one), and the text fields each ended by
    a NUL, which sorts before any character of a file name.
    """
    seconds, micro, unique, base = orderKey(name)
    return _SORT_KEY(chr(len(str(seconds))), seconds, chr(len(str(micro))), micro, unique, base, name)


def parseAnyName(fileName: str) -> Optional[ParsedName]:
    """
    Parse a name of C{cur/} by the general rules (L{orderKey}, L{uidFor},
    L{recordedSize}); see L{parseName}.
    """
    base, flags = splitName(fileName)
    size = recordedSize(base)
    if size is None:
        return None
    seen = flags.startswith("2,") and "S" in flags[2:]
    seconds, micro, _, _ = orderKey(fileName)
    return (timeKey(seconds, micro), base, uidFor(base), size, seen, fileName)


def parseName(fileName: str) -> Optional[ParsedName]:
    """
    Parse a name of C{cur/}: its delivery time (L{timeKey}), base name,
    uid, POP3 size and seen flag, or C{None} if it records no POP3 size.

    The usual name takes one match of L{_USUAL_NAME} (a microsecond
    instead of several); others are parsed by the general rules.

    (A plain tuple of plain values: the garbage collector stops tracking it
    at its first collection, so keeping 100,000 of them costs nothing.)
    """
    match = _USUAL_NAME.fullmatch(fileName)
    if match is None:
        return parseAnyName(fileName)
    base, unique, seconds, micro, size, flags = match.groups()
    if not 0 < len(unique) <= _UID_LENGTH or len(size) > SIZE_DIGITS:
        return parseAnyName(fileName)
    seen = flags is not None and "S" in flags
    return (timeKey(int(seconds or 0), int(micro or 0)), base, unique, int(size), seen, fileName)


class Columns:
    """
    Parsed names of C{cur/}, by column: the delivery time (L{timeKey}),
    name, uid, POP3 size and seen flag of each (a handful of objects for
    the garbage collector, however many names).
    """

    __slots__ = ("times", "names", "uids", "sizes", "seen")

    def __init__(self) -> None:
        self.times = array.array("q")
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
        time, _, uid, size, seen, name = entry
        self.times.append(time)
        self.names.append(name)
        self.uids.append(uid)
        self.sizes.append(size)
        self.seen.append(seen)

    @classmethod
    def joined(cls, first: Columns, second: Columns) -> Columns:
        """
        The parsed names of C{first}, then those of C{second}.
        """
        both = cls()
        both.times = first.times + second.times
        both.names = first.names + second.names
        both.uids = first.uids + second.uids
        both.sizes = first.sizes + second.sizes
        both.seen = first.seen + second.seen
        return both

    def selected(self, chosen: bytes) -> Columns:
        """
        The parsed names whose selector (one octet each) is not 0, in the
        same order.
        """
        taken = Columns()
        taken.times = array.array("q", itertools.compress(self.times, chosen))
        taken.names = list(itertools.compress(self.names, chosen))
        taken.uids = list(itertools.compress(self.uids, chosen))
        taken.sizes = array.array("q", itertools.compress(self.sizes, chosen))
        taken.seen = bytearray(itertools.compress(self.seen, chosen))
        return taken


def _timeKeys(seconds: tuple[str, ...], micros: tuple[str, ...]) -> Iterable[int]:
    """
    The L{timeKey} of each pair of digit strings without leading zeros
    (empty for none): if no cap applies, from the digits put end to end
    (the microseconds padded to six), one call into C per step.
    """
    if max(map(len, seconds)) <= _SECONDS_DIGITS and max(map(len, micros)) <= _MICRO_DIGITS:
        return map(int, map(operator.add, seconds, map(str.zfill, micros, itertools.repeat(_MICRO_DIGITS))))
    return map(timeKey, map(int, map("0".__add__, seconds)), map(int, map("0".__add__, micros)))


def parseColumns(names: list[str], columns: Columns) -> list[str]:
    """
    Parse names of C{cur/} as L{parseName} does, into C{columns}; return the
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
        columns.times.extend(_timeKeys(seconds, micros))
        columns.names += names
        columns.uids += uniques
        columns.sizes.extend(map(int, sizes))
        columns.seen.extend(map(str.__contains__, flags, itertools.repeat("S")))
        return []
    unsized = []
    for name in names:
        entry = parseName(name)
        if entry is None:
            unsized.append(name)
        else:
            columns.add(entry)
    return unsized


def parseInSteps(names: list[str], columns: Columns, step: int, account: Callable[[int], None]) -> list[str]:
    """
    Parse C{names} into C{columns} (see L{parseColumns}) C{step} of them at
    a time, telling C{account} how many before each step; return those
    that record no POP3 size.
    """
    unsized: list[str] = []
    for start in range(0, len(names), step):
        batch = names[start:start + step]
        account(len(batch))
        unsized += parseColumns(batch, columns)
    return unsized


# Sorting or merging this many names holds the GIL for a few milliseconds.
SORT_STEP = 4096


def sortedInSteps(times: list[int], kept: list[int], pause: Callable[[], None]) -> list[int]:
    """
    The indexes of C{times} in the order of their values (ties in any
    order), given those of the first C{len(kept)} in order already
    (C{kept}): the others are sorted in runs of L{SORT_STEP}, pausing after
    each, and the runs merged a step at a time (L{mergedInSteps}).  One
    sort of 100,000 would hold the GIL for tens of milliseconds, and stall
    the reactor thread that long.
    """
    byTime = times.__getitem__
    runs = [kept] if kept else []
    for start in range(len(kept), len(times), SORT_STEP):
        runs.append(sorted(range(start, min(start + SORT_STEP, len(times))), key=byTime))
        pause()
    while len(runs) > 1:
        merged = [mergedInSteps(runs[index], runs[index + 1], times, pause) for index in range(0, len(runs) - 1, 2)]
        if len(runs) % 2:
            merged.append(runs[-1])
        runs = merged
    return list(runs[0]) if runs else []


def inOrder(values: Sequence[_T], order: Sequence[int], pause: Callable[[], None]) -> list[_T]:
    """
    The items of C{values} in C{order} (their indexes), a step of
    L{SORT_STEP} at a time.
    """
    taken: list[_T] = []
    for start in range(0, len(order), SORT_STEP):
        taken += map(values.__getitem__, order[start:start + SORT_STEP])
        pause()
    return taken


def keptIndexes(order: Sequence[int], selectors: bytes) -> list[int]:
    """
    C{order} (a permutation of the indexes of C{selectors}) without the
    indexes whose selector is 0, each renumbered as L{Columns.selected}
    renumbers it.
    """
    before = list(itertools.accumulate(selectors, initial=0))
    return list(map(before.__getitem__, itertools.compress(order, map(selectors.__getitem__, order))))


def tiesBroken(
    order: list[int], times: list[int], names: list[str], pause: Callable[[], None] = lambda: None
) -> list[int]:
    """
    C{order} (indexes of C{times}, in the order of their values), with
    each run of equal times put in the order of its names' L{sortKey}; a
    step of L{SORT_STEP} at a time.  Delivery times seldom tie, so this
    mostly looks once and changes nothing.
    """
    ordered = inOrder(times, order, pause)
    tied: list[int] = []
    for start in range(1, len(ordered), SORT_STEP):
        following = itertools.islice(ordered, start, start + SORT_STEP)
        preceding = itertools.islice(ordered, start - 1, start - 1 + SORT_STEP)
        tied += itertools.compress(range(start, start + SORT_STEP), map(operator.eq, following, preceding))
        pause()
    if not tied:
        return order
    order = list(order)
    end = -1
    for position in tied:
        if position <= end:
            continue
        start = position - 1
        end = position
        while end + 1 < len(ordered) and ordered[end + 1] == ordered[start]:
            end += 1
        order[start:end + 1] = sorted(order[start:end + 1], key=lambda index: sortKey(names[index]))
    return order


def inTimeOrder(order: Sequence[int], times: list[int], pause: Callable[[], None]) -> bool:
    """
    Whether C{order} (indexes of C{times}) is in the order of their values,
    looking a step of L{SORT_STEP} at a time.
    """
    ordered = inOrder(times, order, pause)
    for start in range(1, len(ordered), SORT_STEP):
        following = itertools.islice(ordered, start, start + SORT_STEP)
        preceding = itertools.islice(ordered, start - 1, start - 1 + SORT_STEP)
        if not all(map(operator.le, preceding, following)):
            return False
        pause()
    return True


def mergedInSteps(first: list[int], second: list[int], times: list[int], pause: Callable[[], None]) -> list[int]:
    """
    The indexes of two runs, each in the order of C{times}, merged into
    one in that order (ties in any order), a step of at most L{SORT_STEP}
    from each run at a time.
    """
    merged: list[int] = []
    one = two = 0
    while one < len(first) and two < len(second):
        stepOne = first[one:one + SORT_STEP]
        stepTwo = second[two:two + SORT_STEP]
        # Everything of both steps up to the smaller of their last times
        # comes before anything after them.
        limit = min(times[stepOne[-1]], times[stepTwo[-1]])
        takenOne = bisect.bisect_right(inOrder(times, stepOne, _still), limit)
        takenTwo = bisect.bisect_right(inOrder(times, stepTwo, _still), limit)
        step = stepOne[:takenOne] + stepTwo[:takenTwo]
        step.sort(key=times.__getitem__)
        merged += step
        one += takenOne
        two += takenTwo
        pause()
    return merged + first[one:] + second[two:]


def _still() -> None:
    """Do not pause."""
