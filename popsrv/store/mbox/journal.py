"""
Removing messages from a spool in place, so that a crash or C{kill -9} at
any moment leaves every message present exactly once, or deleted.

The spool is rewritten where it is, not replaced by a new file: a new file
could not keep the spool's owner and mode (C{user:mail 0660}) unless popsrv
ran as root, and mail programs expect the spool's inode to stay.  Before
the spool is touched, a journal (in popsrv's state directory, never next to
the spool) records the spool's identity (device and inode), where the
rewrite starts (the first deleted message), the spool's original octets
from there to its end, the ranges to remove, and a checksum of all that;
it is flushed to disk (C{fsync}, and its directory too).  Then the kept
octets are written from the journal to their new places, the spool is
flushed, cut to its new length (C{ftruncate}) and flushed again, and the
journal is removed.

Under the spool's locks, before anything else, a journal found for the
spool is finished (L{recover}):
    - an incomplete or corrupt journal (a crash while it was written):
      the spool was not touched; it is removed;
    - the spool still has its original octets past the new length (the
      crash came before the cut): the rewrite is done again from the
      journal (every step writes the same octets: doing it twice is doing
      it once); mail a delivery agent appended since (after breaking the
      stale dotlock) is kept, moved down with the rest;
    - the spool has its new octets up to the new length (the crash came
      after the cut): it is done; mail appended since stays;
    - anything else (another program rewrote the spool, or replaced it):
      the journal is moved aside for the operator (C{.orphaned}) and the
      spool left alone.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import time
from typing import BinaryIO, Callable, Iterator, List, Optional, Tuple

import attr

from popsrv.store.mbox.spool import SpoolFile

__all__ = ["CHUNK", "Journal", "JournalCorrupt", "Plan", "applyPlan", "recover", "rewrite"]

CHUNK = 1024 * 1024
_MAGIC = b"popsrv mbox journal 1\n"
_HEADER = re.compile(rb"dev=(\d+) ino=(\d+) start=(\d+) end=(\d+) removed=([\d,-]*)\n")
_CHECKSUM_OCTETS = hashlib.sha256().digest_size
_OPEN_JOURNAL = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# Called with the name of each step of a rewrite as it is done (the tests
# stop the process at every one of them).
Checkpoint = Callable[[str], None]


def _noCheckpoint(step: str) -> None:
    """Go on (no test is watching)."""


class JournalCorrupt(Exception):
    """
    A journal that is incomplete or damaged.
    """


class _ShortRead(OSError):
    """
    A file ended before the octets to copy from it.
    """


@attr.s(frozen=True, auto_attribs=True)
class Plan:
    """
    One rewrite of a spool.

    @ivar identity: the spool's device and inode.
    @ivar start: where the rewrite starts (the first removed octet).
    @ivar end: the spool's length before the rewrite.
    @ivar removed: the ranges to remove, C{(first, last + 1)} relative to
        C{start}, in order, not overlapping.
    """

    identity: Tuple[int, int]
    start: int
    end: int
    removed: Tuple[Tuple[int, int], ...]

    def kept(self) -> Iterator[Tuple[int, int]]:
        """
        The ranges (relative to C{start}) kept, in order.
        """
        position = 0
        for first, last in self.removed:
            if first > position:
                yield position, first
            position = last
        if position < self.end - self.start:
            yield position, self.end - self.start

    def newEnd(self) -> int:
        """
        The spool's length after the rewrite.
        """
        return self.start + sum(last - first for first, last in self.kept())


@attr.s(frozen=True, auto_attribs=True)
class Journal:
    """
    A complete journal, open.

    @ivar plan: the rewrite it records.
    @ivar stream: the journal file.
    @ivar original: where in it the spool's original octets start.
    """

    plan: Plan
    stream: BinaryIO
    original: int


def _pread(fd: int, size: int, at: int) -> bytes:
    """
    Read C{size} octets of C{fd} at C{at}.
    """
    return os.pread(fd, size, at)


def _write(fd: int, data: bytes, at: Optional[int] = None) -> None:
    """
    Write all of C{data} to C{fd} (at C{at}, or where it is): a write may
    write less than it is given (a full disk), and the next one then says
    why.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if at is None else os.pwrite(fd, view, at)
        if written <= 0:
            raise OSError(errno.EIO, "nothing written")
        view = view[written:]
        if at is not None:
            at += written


def _copy(readFrom: Callable[[int, int], bytes], source: int, length: int, write: Callable[[bytes], None]) -> None:
    """
    Copy C{length} octets from C{source}, by chunks.
    """
    done = 0
    while done < length:
        chunk = readFrom(min(CHUNK, length - done), source + done)
        if not chunk:
            raise _ShortRead(f"unexpected end of file at {source + done}")
        write(chunk)
        done += len(chunk)


def _header(plan: Plan) -> bytes:
    """
    The journal's first lines, for C{plan}.
    """
    return _MAGIC + b"dev=%d ino=%d start=%d end=%d removed=%s\n" % (
        plan.identity[0], plan.identity[1], plan.start, plan.end,
        b",".join(b"%d-%d" % pair for pair in plan.removed),
    )


# Where a journal's original octets come from: a descriptor, an offset in
# it and a length.
_Source = Tuple[int, int, int]


def _writeJournal(path: str, plan: Plan, sources: List[_Source], checkpoint: Checkpoint) -> None:
    """
    Write the journal of C{plan} at C{path}, its original octets copied
    from C{sources}, and flush it to disk.
    """
    header = _header(plan)
    checksum = hashlib.sha256(header)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        def write(data: bytes) -> None:
            checksum.update(data)
            _write(fd, data)
            checkpoint("journal write")

        _write(fd, header)
        for source, offset, length in sources:
            _copy(functools.partial(_pread, source), offset, length, write)
        _write(fd, checksum.digest())
        checkpoint("journal written")
        os.fsync(fd)
        checkpoint("journal fsync")
    finally:
        os.close(fd)


def writeJournal(path: str, spool: SpoolFile, plan: Plan, checkpoint: Checkpoint = _noCheckpoint) -> None:
    """
    Write the journal of C{plan} at C{path}, its original octets read
    from C{spool}, and flush it and its directory to disk.
    """
    _writeJournal(path, plan, [(spool.fd, plan.start, plan.end - plan.start)], checkpoint)
    _syncDirectory(os.path.dirname(path))
    checkpoint("journal directory fsync")


def _syncDirectory(path: str) -> None:
    """
    Flush a directory's entries to disk.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def readJournal(path: str) -> Journal:
    """
    Open the journal at C{path} and check that it is complete.

    @raise JournalCorrupt: if it is not.
    @raise FileNotFoundError: if there is none.
    """
    fd = os.open(path, _OPEN_JOURNAL)
    stream = os.fdopen(fd, "rb")
    try:
        magic = stream.readline(len(_MAGIC))
        line = stream.readline(64 * 1024 * 1024)
        match = _HEADER.fullmatch(line)
        if magic != _MAGIC or match is None:
            raise JournalCorrupt(f"{path} does not start as a journal")
        dev, ino, start, end = (int(match.group(index)) for index in range(1, 5))
        removed = tuple(
            tuple(int(number) for number in pair.split(b"-")) for pair in match.group(5).split(b",") if pair
        )
        plan = Plan((dev, ino), start, end, removed)  # type: ignore[arg-type]
        original = len(magic) + len(line)
        if os.fstat(fd).st_size != original + (end - start) + _CHECKSUM_OCTETS or start > end:
            raise JournalCorrupt(f"{path} is incomplete")
        if any(len(pair) != 2 for pair in removed) or not _ordered(plan):
            raise JournalCorrupt(f"{path} has ranges out of order")
        checksum = hashlib.sha256(magic + line)
        try:
            _copy(functools.partial(_pread, fd), original, end - start, checksum.update)
        except _ShortRead:
            raise JournalCorrupt(f"{path} is incomplete") from None
        if os.pread(fd, _CHECKSUM_OCTETS, original + end - start) != checksum.digest():
            raise JournalCorrupt(f"{path} does not match its checksum")
    except BaseException:
        stream.close()
        raise
    return Journal(plan, stream, original)


def _ordered(plan: Plan) -> bool:
    """
    Whether a plan's ranges are in order, apart, and within the spool.
    """
    position = 0
    for first, last in plan.removed:
        if first < position or last <= first:
            return False
        position = last
    return position <= plan.end - plan.start


def applyPlan(journal: Journal, spool: SpoolFile, checkpoint: Checkpoint = _noCheckpoint) -> None:
    """
    Write the kept octets from the journal to their places in the spool
    and cut the spool after them; flush it to disk before and after the
    cut.
    """
    plan = journal.plan
    fd = journal.stream.fileno()
    position = plan.start

    def write(data: bytes) -> None:
        nonlocal position
        _write(spool.fd, data, position)
        position += len(data)
        checkpoint("spool write")

    for first, last in plan.kept():
        _copy(lambda size, at: os.pread(fd, size, at), journal.original + first, last - first, write)
    os.fsync(spool.fd)
    checkpoint("spool fsync")
    os.ftruncate(spool.fd, position)
    checkpoint("spool truncate")
    os.fsync(spool.fd)
    checkpoint("spool fsync after truncate")


def rewrite(path: str, spool: SpoolFile, plan: Plan, checkpoint: Checkpoint = _noCheckpoint) -> None:
    """
    Remove C{plan}'s ranges from the spool, crash-safely: journal, apply,
    remove the journal.
    """
    writeJournal(path, spool, plan, checkpoint)
    journal = readJournal(path)
    try:
        applyPlan(journal, spool, checkpoint)
    finally:
        journal.stream.close()
    os.unlink(path)
    checkpoint("journal removed")


def _same(spool: SpoolFile, at: int, journal: Journal, ranges: List[Tuple[int, int]]) -> bool:
    """
    Whether the spool, from C{at} on, holds the journal's original octets
    of C{ranges} (relative to the plan's start), one after the other.
    """
    fd = journal.stream.fileno()
    for first, last in ranges:
        done = 0
        while done < last - first:
            size = min(CHUNK, last - first - done)
            if os.pread(spool.fd, size, at) != os.pread(fd, size, journal.original + first + done):
                return False
            at += size
            done += size
    return True


def recover(
    path: str, spool: Optional[SpoolFile], checkpoint: Checkpoint = _noCheckpoint,
) -> Optional[Tuple[str, str]]:
    """
    Finish (or drop) the journal of a rewrite that did not end, if there is
    one at C{path}; call only under the spool's locks.

    @return: C{None} if there was none, else what was done
        (C{"replayed"}, C{"done"}, C{"incomplete"} or C{"orphaned"}) and
        why, for the log.
    """
    try:
        journal = readJournal(path)
    except FileNotFoundError:
        return None
    except JournalCorrupt as error:
        # (Any other error, one reading it, say, leaves it for next time.)
        os.unlink(path)
        return "incomplete", str(error)
    try:
        return _finish(path, journal, spool, checkpoint)
    finally:
        journal.stream.close()


def _finish(path: str, journal: Journal, spool: Optional[SpoolFile], checkpoint: Checkpoint) -> Tuple[str, str]:
    """
    Finish a complete journal (see L{recover}).
    """
    plan = journal.plan
    if spool is None or spool.identity != plan.identity:
        return _setAside(path, "the spool is gone or was replaced")
    size = spool.size()
    newEnd = plan.newEnd()
    length = plan.end - plan.start
    tail = [(newEnd - plan.start, length)] if newEnd - plan.start < length else []
    if size >= plan.end and _same(spool, newEnd, journal, tail):
        if size > plan.end:
            journal = _withAppended(path, journal, spool, size, checkpoint)
        applyPlan(journal, spool, checkpoint)
        journal.stream.close()
        os.unlink(path)
        checkpoint("journal removed")
        return "replayed", f"rewrite of {length} octets from {plan.start} done again"
    if size >= newEnd and _same(spool, plan.start, journal, list(plan.kept())):
        os.unlink(path)
        checkpoint("journal removed")
        return "done", "the rewrite had ended"
    return _setAside(path, "the spool changed since")


def _withAppended(path: str, journal: Journal, spool: SpoolFile, size: int, checkpoint: Checkpoint) -> Journal:
    """
    Replace the journal by one whose original octets include those
    appended to the spool since (so that doing it again keeps them).
    """
    plan = journal.plan
    temporary = path + ".new"
    sources = [
        (journal.stream.fileno(), journal.original, plan.end - plan.start),
        (spool.fd, plan.end, size - plan.end),
    ]
    _writeJournal(temporary, attr.evolve(plan, end=size), sources, _noCheckpoint)
    # Checked whole before it replaces the journal in force.
    extended = readJournal(temporary)
    try:
        os.replace(temporary, path)
        _syncDirectory(os.path.dirname(path))
    except BaseException:
        extended.stream.close()
        raise
    checkpoint("journal extended")
    journal.stream.close()
    return extended


def _setAside(path: str, why: str) -> Tuple[str, str]:
    """
    Keep a journal that cannot be used under another name, for the
    operator.
    """
    aside = f"{path}.orphaned-{int(time.time())}"
    os.replace(path, aside)
    return "orphaned", f"{why}; the journal is kept as {aside}"
