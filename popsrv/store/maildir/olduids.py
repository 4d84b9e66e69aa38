"""
The UIDLs another POP3 server showed for the messages of a Maildir, and a
snapshot of C{cur/} served with them.

A site that moves from Dovecot or Courier keeps its Maildirs, and with them
the file in which the old server kept its UIDLs (L{popsrv.store.maildir.dovecot},
L{popsrv.store.maildir.courier}).  A L{OldUids} is what such a file says:
for each message it knew, named by its L{uniquePart} (the Maildir base name
without C{,S=} and C{,W=}, which popsrv adds), the UIDL the old server
showed, in the order it numbered them.  L{OldUids.serve} then turns a
snapshot of C{cur/} (popsrv's own uids, in delivery order) into the one
clients of the old server expect:

    - a message the file names keeps its old UIDL, and the messages it
      names come first, in the old server's order;
    - every other message (delivered since) follows, in delivery order,
      with popsrv's own uid, unless that is a UIDL the file gives (a file
      named like an old UIDL, by chance or on purpose): then it gets a
      hash of its own, never one the file gives, whether the message that
      had it is still there or not;
    - no two messages ever share a uid: a UIDL the file gives twice is kept
      by the first message only, and one that POP3 does not allow (not 1
      to 70 octets from 0x21 to 0x7E) by none: those messages get popsrv's
      own, and L{OldUids.notes} says so.
"""

from __future__ import annotations

import array
import re
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Set, Tuple

from popsrv.messages import MessageList
from popsrv.store.maildir.intake import splitName
from popsrv.store.maildir.parsing import SORT_STEP, hashedUid, uniquePart

__all__ = ["LOGGED_EXAMPLES", "Note", "OldUids", "Tally", "fileLines", "uidlProblem"]

_UIDL_OCTETS = re.compile(rb"[\x21-\x7e]{1,70}")
# What popsrv's own uid is when it is not the unique part of the name: a
# hash (see L{hashedUid}).
_HASHED = re.compile(r"[0-9a-f]{40}")
# How many examples a note keeps.
LOGGED_EXAMPLES = 20


class Note(NamedTuple):
    """
    Something wrong in a file of old UIDLs, or in serving a snapshot with
    them, for the log.

    @ivar event: the log event's stable name.
    @ivar text: what was wrong, in a few words.
    @ivar total: how many times.
    @ivar examples: the first few of them (L{LOGGED_EXAMPLES} at most).
    """

    event: str
    text: str
    total: int
    examples: Tuple[str, ...]


def uidlProblem(uidl: bytes) -> Optional[str]:
    """
    Why C{uidl} cannot be a POP3 UIDL, or C{None} if it can.
    """
    if _UIDL_OCTETS.fullmatch(uidl):
        return None
    return f"{uidl[:80]!r} is not 1 to 70 printable octets"


def fileLines(data: bytes, maxLine: int, pause: Callable[[], None]) -> Iterator[Tuple[int, Optional[bytes]]]:
    """
    The lines of a file, numbered from 1, without their line ends; C{None}
    for a line longer than C{maxLine} octets (which is not copied);
    C{pause} is called every L{SORT_STEP} lines.
    """
    start, number = 0, 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        number += 1
        if number % SORT_STEP == 0:
            pause()
        yield number, data[start:end] if end - start <= maxLine else None
        start = end + 1


class Tally:
    """
    Collects the instances of one kind of problem for a L{Note}.

    @ivar count: how many there were.
    """

    def __init__(self, event: str, text: str) -> None:
        self.event = event
        self.text = text
        self.count = 0
        self.examples: List[str] = []

    def add(self, example: str) -> None:
        """Count one, described by C{example}."""
        self.count += 1
        if len(self.examples) < LOGGED_EXAMPLES:
            self.examples.append(example)

    def note(self) -> List[Note]:
        """The note, if there was anything to note."""
        return [Note(self.event, self.text, self.count, tuple(self.examples))] if self.count else []


class OldUids:
    """
    The UIDLs a file of an earlier server gives, by message.

    @ivar source: the file's name in the Maildir (C{dovecot-uidlist}...).
    @ivar records: how many messages it names with a usable UIDL.
    @ivar notes: what was wrong with it (lines or UIDLs not used).
    @ivar refused: why the whole file is not used, or C{None}.
    """

    def __init__(self, source: str, notes: Iterable[Note] = (), refused: Optional[str] = None) -> None:
        self.source = source
        self.notes = list(notes)
        self.refused = refused
        # The UIDL of each message, in the old server's order; the index
        # of each in that list by the unique part of its name; every UIDL
        # the file gives.
        self._uidls: List[str] = []
        self._byName: Dict[str, int] = {}
        self._taken: Set[str] = set()
        self.records = 0

    def __len__(self) -> int:
        return self.records

    def uidls(self) -> List[str]:
        """
        The UIDL of each message the file names, in the old server's order.
        """
        return [self._uidls[rank] for rank in sorted(self._byName.values())]

    @classmethod
    def build(
        cls,
        source: str,
        entries: Iterable[Tuple[str, bytes, str]],
        notes: Iterable[Note] = (),
        pause: Callable[[], None] = lambda: None,
    ) -> OldUids:
        """
        Make one from the file's entries, in the old server's order.

        @param entries: C{(file name, UIDL, label)} for each message: the
            name as the file gives it (with or without flags and size
            fields), the UIDL the old server showed, and how the log names
            the entry (C{"uid 7"}).
        @param notes: what the file's reader found wrong already.
        @param pause: called now and then (to let other threads run).
        """
        self = cls(source, notes)
        bad = Tally("uidl-refused", "UIDLs not used (those messages get popsrv's own)")
        seen: Dict[str, str] = {}
        for count, (fileName, uidl, label) in enumerate(entries, 1):
            if count % SORT_STEP == 0:
                pause()
            problem = uidlProblem(uidl)
            if problem is not None:
                bad.add(f"{label}: {problem}")
                continue
            text = uidl.decode("ascii")
            if text in seen:
                bad.add(f"{label}: {text} is the UIDL of {seen[text]} already")
                continue
            seen[text] = label
            # A later entry of the same name replaces an earlier one (as in
            # Dovecot); the UIDLs of both stay taken.
            self._byName[uniquePart(splitName(fileName)[0])] = len(self._uidls)
            self._uidls.append(text)
        self._taken = set(seen)
        self.records = len(self._byName)
        self.notes.extend(bad.note())
        return self

    def serve(
        self, messages: MessageList, fileNames: Mapping[str, str], pause: Callable[[], None] = lambda: None,
    ) -> Tuple[MessageList, Dict[str, str], List[Note], int]:
        """
        Serve a snapshot of C{cur/} with the old UIDLs.

        @param messages: the snapshot, with popsrv's own uids (unique), in
            delivery order.
        @param fileNames: the file name of each of its messages, by uid.
        @param pause: called now and then (to let other threads run).
        @return: the snapshot as served (see the module's docstring), the
            file name of each message by its new uid, the notes for the
            log, and how many messages kept an old UIDL.
        """
        uids = messages.uids()
        old: List[Tuple[int, int]] = []
        rest: List[int] = []
        used: Set[int] = set()
        shared = Tally("uid-collision", "messages whose names the file gives twice (they get popsrv's own uids)")
        for index, uid in enumerate(uids):
            if index % SORT_STEP == SORT_STEP - 1:
                pause()
            # popsrv's own uid is the unique part of the name, unless it is a
            # hash (an unusable or shared name): only then is the name parsed.
            hashed = len(uid) == 40 and _HASHED.fullmatch(uid)
            rank = self._byName.get(uniquePart(splitName(fileNames[uid])[0]) if hashed else uid)
            if rank is None:
                rest.append(index)
            elif rank in used:
                shared.add(fileNames[uid])
                rest.append(index)
            else:
                used.add(rank)
                old.append((rank, index))
        old.sort()
        order = [index for _, index in old] + rest
        served = [self._uidls[rank] for rank, _ in old]
        given = set(served)
        renamed = Tally("uid-collision", "new messages whose uids the file gives (they get a hash instead)")
        for index in rest:
            uid = candidate = uids[index]
            tries = 0
            while candidate in self._taken or candidate in given:
                tries += 1
                candidate = hashedUid(f"{uid}\0{tries}")
            if tries:
                renamed.add(fileNames[uid])
            served.append(candidate)
            given.add(candidate)
        sizes = messages.sizes()
        seen = [info.seen for info in messages]
        snapshot = MessageList(served, array.array("q", [sizes[i] for i in order]), bytearray(seen[i] for i in order))
        names = {uid: fileNames[uids[index]] for uid, index in zip(served, order)}
        return snapshot, names, shared.note() + renamed.note(), len(old)
