"""
Taking a message into C{cur/}: measuring it once, if its name does not
record its POP3 size (C{,W=}), and renaming it, from C{new/} or within
C{cur/}, to a name with its sizes (C{,S=} and C{,W=}), in one C{rename}.
Whatever happens (C{kill -9} included), a message is in exactly one place,
under a name whose sizes are right.

Everything works through directory descriptors opened once, at lock time
(see L{popsrv.store.maildir.directory}), with as few system calls per
message as can be: open (without following a link, without blocking),
C{fstat} (only a regular file is read), one read for most messages,
close, rename.

This module imports nothing from popsrv, so that it also runs in a helper
process (L{popsrv.store.maildir.helper}), which starts in a few
milliseconds.  The server takes a big C{new/} that
way (see L{popsrv.store.maildir.newmail}): a thread of the server would
hand the GIL back and forth with the reactor thread at each of the half a
dozen system calls per message, which under load took longer than the
work itself.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import stat
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

__all__ = [
    "ENTRY_WORK", "LIST_STEP", "MEASURE_CHUNK", "NAME_WORK", "NotAFile", "entriesOf", "listDirectory",
    "measure", "openRegular", "recordedSize", "sizedName", "splitName", "takeMessage", "takeNew",
]

OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_MESSAGE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# What opening a name that is not a regular file (any more) fails with:
# a symbolic link with O_NOFOLLOW, a socket, a device without a driver, a
# directory opened for writing.
NOT_A_FILE_ERRORS = (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.ENODEV, errno.EISDIR)
# How many entries a listing reads between two calls of its pacing.
LIST_STEP = 256
MEASURE_CHUNK = 2**20
# What handling one file name costs, in measured octets (measuring holds
# the GIL about 1 us per KiB, parsing a name about 1 us): a pacer that
# yields every MiB yields every ~1,000 names, each time it has held the GIL
# about 1 ms.  (Yielding, time.sleep(0), costs some 80 us: every 250 names,
# as with 4 KiB a name, took a tenth of the time of listing 100,000.)
NAME_WORK = 1024
# What reading one directory entry costs, in the same units.
ENTRY_WORK = NAME_WORK // 4

_VIRTUAL_SIZE = re.compile(r",W=(\d+)")
# The most digits of a recorded size taken for true (a size of an exabyte).
SIZE_DIGITS = 18
_PHYSICAL_SIZE = re.compile(r",S=\d+")

# Told how much work (in octets measured, see NAME_WORK) is done or about
# to be, to pace it.
Account = Callable[[int], None]
# The POP3 size of a message given as chunks (popsrv.wire.framing's
# normalizedSize).
SizeOf = Callable[[Iterable[bytes]], int]


class NotAFile(Exception):
    """
    A name that should be a message file is something else: a symbolic
    link, a FIFO, a socket, a device or a directory.
    """


def _nothing(octets: int) -> None:
    """Do nothing (the default pacing)."""


def splitName(name: str) -> tuple[str, str]:
    """
    Split a Maildir file name into its base name and its info part (without
    the colon; empty if there is none).
    """
    base, _, info = name.partition(":")
    return base, info


def recordedSize(base: str) -> Optional[int]:
    """
    The POP3 size a base name records in its C{,W=} field, or C{None}.
    """
    match = _VIRTUAL_SIZE.search(base)
    if match is None or len(match.group(1)) > SIZE_DIGITS:
        return None
    return int(match.group(1))


@contextlib.contextmanager
def entriesOf(dirFd: int) -> Iterator[Iterator[os.DirEntry[str]]]:
    """
    Read a directory's entries through a descriptor of its own, so that the
    reading starts at the first entry whatever another reading of the
    directory did.
    """
    fd = os.open(".", OPEN_DIRECTORY, dir_fd=dirFd)
    try:
        with os.scandir(fd) as entries:
            yield entries
    finally:
        os.close(fd)


def listDirectory(dirFd: int, account: Account = _nothing) -> Tuple[List[str], List[str]]:
    """
    List a directory: the names of its regular files, and the names of what
    else it holds (links, FIFOs, devices, directories); names that start
    with a dot are neither.  Each entry is looked at once, with the type
    its directory entry gives (no C{stat}, unless the file system gives no
    types).

    @param account: called with the number of entries about to be looked
        at, for every L{LIST_STEP} of them (to pace the work).
    """
    files: List[str] = []
    others: List[str] = []
    with entriesOf(dirFd) as entries:
        while batch := list(itertools.islice(entries, LIST_STEP)):
            account(len(batch))
            for entry in batch:
                if entry.name.startswith("."):
                    continue
                (files if entry.is_file(follow_symlinks=False) else others).append(entry.name)
    return files, others


def openRegular(dirFd: int, name: str) -> Tuple[int, os.stat_result]:
    """
    Open a regular file of a directory for reading, as a descriptor (the
    caller closes it), and return it with the file's status.

    It is opened without following a link, without blocking (a FIFO opens
    at once) and without becoming a controlling terminal, and used only
    if, once open, it is a regular file: its name is looked up once, by the
    open itself.  The descriptor is left non-blocking, which changes
    nothing for a regular file.

    @raise NotAFile: if it is not a regular file.
    @raise FileNotFoundError: if it is gone.
    """
    try:
        fd = os.open(name, OPEN_MESSAGE, dir_fd=dirFd)
    except OSError as error:
        if error.errno in NOT_A_FILE_ERRORS:
            raise NotAFile(name) from None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise NotAFile(name)
    except BaseException:
        os.close(fd)
        raise
    return fd, status


class _Reading:
    """
    A file read once to its end, as chunks, counting its octets.

    Reads ask for one octet more than the file's size as C{fstat} gave it,
    so a message smaller than L{MEASURE_CHUNK} is one C{read}: a short read
    of a regular file is its end.  Past that size (the file grew), reads
    ask for L{MEASURE_CHUNK}.  (One C{read} of a fresh C{bytes} of about
    the file's size is quicker, measured, than C{readinto} a buffer kept
    for every file.)

    @ivar octets: how many octets were read.
    """

    def __init__(self, fd: int, expected: int, account: Account) -> None:
        self._fd = fd
        self._expected = expected
        self._account = account
        self.octets = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            left = self._expected - self.octets
            wanted = min(MEASURE_CHUNK, left + 1) if left >= 0 else MEASURE_CHUNK
            chunk = os.read(self._fd, wanted)
            if not chunk:
                return
            self.octets += len(chunk)
            self._account(len(chunk))
            yield chunk
            if len(chunk) < wanted and self.octets >= self._expected:
                return


def measure(dirFd: int, fileName: str, sizeOf: SizeOf, account: Account = _nothing) -> tuple[int, int]:
    """
    Return a stored message's file size and POP3 size, reading it once.

    @param sizeOf: the POP3 size of the chunks of a message.
    @param account: told the octets read (to pace the work).
    @raise NotAFile: if it is not a regular file.
    @raise FileNotFoundError: if it is gone.
    """
    fd, status = openRegular(dirFd, fileName)
    try:
        reading = _Reading(fd, status.st_size, account)
        size = sizeOf(reading)
        return reading.octets, size
    finally:
        os.close(fd)


def sizedName(dirFd: int, fileName: str, target: str, sizeOf: SizeOf, account: Account = _nothing) -> Optional[str]:
    """
    The name C{target} with the message's sizes in its base name: as it is
    if it records the POP3 size already (C{,W=} is trusted), else with
    C{,W=<POP3 size>} added, after C{,S=<file size>} unless that is there.
    Return C{None} if the message is gone or not a regular file.

    @raise OSError: if it cannot be read.
    """
    base, info = splitName(target)
    if recordedSize(base) is None:
        try:
            physical, size = measure(dirFd, fileName, sizeOf, account)
        except (FileNotFoundError, NotAFile):
            return None
        # (Without a size field too long to be true, which a file's name
        # may hold: it would hide the true one.)
        base = _VIRTUAL_SIZE.sub("", base)
        if not _PHYSICAL_SIZE.search(base):
            base += f",S={physical}"
        base += f",W={size}"
    return f"{base}:{info}" if info or ":" in target else base


def takeMessage(
    dirFd: int, fileName: str, target: str, curFd: int, sizeOf: SizeOf, account: Account = _nothing
) -> Optional[str]:
    """
    Measure a message of the directory C{dirFd} if need be (see
    L{sizedName}) and rename it into C{cur/} (C{curFd}) as C{target} with
    its sizes; return its new name, or C{None} if it vanished or is not a
    regular file.

    @raise OSError: if it cannot be read, or renamed (its name with the
        sizes is too long).
    """
    newName = sizedName(dirFd, fileName, target, sizeOf, account)
    if newName is None:
        return None
    try:
        os.rename(fileName, newName, src_dir_fd=dirFd, dst_dir_fd=curFd)
    except FileNotFoundError:
        return None
    return newName


def takeNew(
    newFd: int, curFd: int, sizeOf: SizeOf, account: Account = _nothing
) -> Tuple[List[str], List[Tuple[str, str]]]:
    """
    Move every message of C{new/} to C{cur/}, with its sizes in its name and
    an empty info part (C{:2,}) if it had none; return the names in
    C{new/} that are not regular files, and those of the files that could
    not be taken (unreadable, or a name too long for the sizes), with why:
    all are left where they are.

    @param account: told the work done, in octets (see L{NAME_WORK}).
    """
    names, others = listDirectory(newFd, lambda count: account(count * ENTRY_WORK))
    unusable = []
    for fileName in names:
        account(NAME_WORK)
        base, info = splitName(fileName)
        try:
            takeMessage(newFd, fileName, fileName if info else base + ":2,", curFd, sizeOf, account)
        except OSError as error:
            unusable.append((fileName, error.strerror or type(error).__name__))
    return others, unusable
