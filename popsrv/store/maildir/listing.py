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
import itertools
import threading
from typing import Callable, Iterable, Optional, Tuple

from popsrv.messages import MessageList
from popsrv.store.maildir.intake import recordedSize, splitName
from popsrv.store.maildir.parsing import (
    SORT_STEP,
    Columns,
    hashedUid,
    inOrder,
    keptIndexes,
    orderKey,
    parseColumns,
    parseName,
    sortedInSteps,
    tiesBroken,
    uidFor,
    uniquePart,
)

__all__ = [
    "ACCOUNT_STEP", "KEPT_NAME_SET", "CurListing", "ListingCache", "hashedUid", "orderKey", "recordedSize",
    "splitName", "uidFor", "uniquePart",
]

# Names parsed between two calls of an update's account.
ACCOUNT_STEP = 256
# A listing of at least this many names keeps the set of them between
# updates.
KEPT_NAME_SET = 1024


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
        # The parsed names, in the order they were parsed, and the indexes
        # of those in POP3 order.
        self._parsed = Columns()
        self._order = array.array("q")
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
        order = self._order.tolist()
        if kept != len(parsed):
            present = set(names)
            selectors = bytes(map(present.__contains__, parsed.names))
            parsed, order = parsed.selected(selectors), keptIndexes(order, selectors)
        # The columns of the snapshot that sessions hold are never changed:
        # the fresh names are parsed apart, and both put in order anew.
        added = Columns()
        for start in range(0, len(fresh), ACCOUNT_STEP):
            batch = fresh[start:start + ACCOUNT_STEP]
            account(len(batch))
            for name in parseColumns(batch, added):
                renamed = withSize(name)
                if renamed is None:
                    continue
                if present is None:
                    present = set(names)
                # Measured, it may take the name of a file listed as well
                # (which the rename replaced): one message, not two.
                if renamed in present:
                    continue
                entry = parseName(renamed)
                if entry is not None:
                    present.add(renamed)
                    added.add(entry)
        everything = Columns.joined(parsed, added)
        times = everything.times.tolist()
        self._parsed = everything
        self._order = array.array("q", tiesBroken(sortedInSteps(times, order, pause), times, everything.names, pause))
        self._publish(pause)

    def adopt(
        self,
        parsed: Columns,
        order: array.array[int],
        unsized: list[str],
        withSize: Callable[[str], Optional[str]],
        account: Callable[[int], None] = lambda count: None,
        pause: Callable[[], None] = lambda: None,
    ) -> None:
        """
        Make a first listing of names parsed elsewhere (in a helper
        process): C{parsed}, with C{order} the indexes of its names in POP3
        order, and C{unsized}, the names of files that record no POP3 size
        (see L{update}).
        """
        if self._listed:
            raise ValueError("a listing is adopted only as the first")
        self._parsed, self._order = parsed, order
        if unsized:
            self.update(parsed.names + unsized, withSize, account, pause)
        else:
            self._listed = True
            self._publish(pause)

    def _publish(self, pause: Callable[[], None]) -> None:
        """
        Build the snapshot from the parsed names, giving each of the names
        that would share a uid a hash of its own instead; drop the parsed
        names of a small listing.
        """
        # Made again by the next update that needs it: most never do (the
        # next session finds cur/ unchanged, or not at all).
        self._known = None
        parsed = self._parsed
        uids, names = parsed.uids, parsed.names
        fileNames: dict[str, str] = {}
        for start in range(0, len(uids), SORT_STEP):
            fileNames.update(zip(uids[start:start + SORT_STEP], names[start:start + SORT_STEP]))
            pause()
        if len(fileNames) < len(uids):
            uids = _unshared(uids, names)
            fileNames = dict(zip(uids, names))
        order = self._order
        self.messages = MessageList(
            inOrder(uids, order, pause), array.array("q", inOrder(parsed.sizes, order, pause)),
            bytearray(inOrder(parsed.seen, order, pause)),
        )
        self.fileNames = fileNames
        if len(parsed) < KEPT_NAME_SET:
            self._parsed, self._order = Columns(), array.array("q")
            self._dropped = True


def _unshared(uids: list[str], names: list[str]) -> list[str]:
    """
    The uids of C{names}, each of those that would share a uid given a hash
    of its own instead: names alike but for their size fields (or, against
    the Maildir rules, alike but for their flags), or a name made to look
    like such a hash.  None may ever show another's message.  The uids
    depend on the names only, not on the order they were parsed in.
    """
    uids = list(uids)
    bases = collections.Counter(splitName(name)[0] for name in names)
    for attempt in itertools.count(1):
        counts = collections.Counter(uids)
        shared = [index for index, uid in enumerate(uids) if counts[uid] > 1]
        if not shared:
            return uids
        for index in shared:
            name = names[index]
            base = splitName(name)[0]
            if attempt == 1:
                uids[index] = hashedUid(base if bases[base] == 1 else name)
            elif attempt == 2:
                # (Names of one directory are unique: their hashes with the
                # attempt do not tie.)
                uids[index] = hashedUid(f"{name}\0{attempt}")
            else:
                # A name listed twice (a directory read while renames
                # went on) is told apart by its place.
                uids[index] = hashedUid(f"{name}\0{attempt}\0{index}")
    raise AssertionError("unreachable")


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
