"""
The production backend: a user's maildrop is a Maildir on disk.

Layout and rules (the Maildir conventions of qmail, Courier and Dovecot):
    - C{new/} holds delivered mail; at login its messages move to C{cur/},
      with C{,S=<file size>,W=<POP3 size>} recorded in the name and an
      empty C{:2,} info part, so later logins need not read them again.
    - A message's uid (UIDL) is its base name (before C{:}) without the
      C{,S=} and C{,W=} fields, so it stays the same when those fields or
      the flags change; a base name that is not 1 to 70 printable octets is
      replaced by a stable hash of it.
    - C{,W=<n>} in a name is trusted as the POP3 size (CRLF line ends).
      C{,S=} alone is the size of the file as stored, which differs from the
      POP3 size when lines end in LF; such messages are measured once and
      C{W=} is added to their name.
    - Messages are numbered by delivery time (the leading number of the
      name), then name.
    - The maildrop lock is C{flock} on C{<maildir>/popsrv.lock}: exclusive
      across processes, and freed by the kernel when a process dies.
    - RETR sets the Maildir "seen" flag (C{S}) at QUIT; DELE unlinks at QUIT.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from typing import AbstractSet, List, Mapping, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from zope.interface import implementer

from popsrv.errors import MaildropError, MaildropLocked, MaildropUnusable, MessageVanished
from popsrv.interfaces import IMaildrop
from popsrv.messages import MessageInfo, MessageList
from popsrv.store.maildir.listing import ListingCache, splitName
from popsrv.store.maildir.newmail import (
    NAME_WORK,
    GILPacer,
    listMessageFiles,
    openMessage,
    recordSize,
)
from popsrv.store.maildir.newmail import deliverNew as takeNewMail
from popsrv.threads import Runner, inline
from popsrv.wire.streaming import CHUNK_SIZE, sendFile

__all__ = ["LOCK_FILE", "MaildirMaildrop"]

LOCK_FILE = "popsrv.lock"
# Below these, listing or committing is quicker done at once than handed to
# a thread (measured: about 20 % more sessions per second for small
# maildrops), and short enough not to hold up other sessions.
QUICK_DIRECTORY_SIZE = 32 * 1024
QUICK_COMMIT_FILES = 64
# How long after cur/ last changed its modification time is sure to change
# again with the next change: the timestamps of Linux's local file systems
# are as coarse as the kernel's clock tick (10 ms at most), those in whole
# seconds (FAT, some network file systems) need 2 s.  On NFS this holds only
# while the server's clock keeps in step with popsrv's.
SETTLED_NS = 20 * 10**6
COARSE_SETTLED_NS = 2 * 10**9 + SETTLED_NS
# The wall clock in nanoseconds (a name of its own for the tests).
_nowNS = time.time_ns

log = Logger()
# The parsed cur/ listings of the big Maildirs this process served lately.
LISTINGS = ListingCache()

# The messages a commit could not mark seen, with why.
_Problems = List[Tuple[str, Exception]]


def _signature(status: os.stat_result) -> tuple[int, int, int, int]:
    """
    What identifies the state of a directory: device, inode, modification
    time and size.
    """
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)


def _settleTime(mtimeNS: int) -> int:
    """
    How long after a change with this modification time the next change is
    sure to show in it: timestamps in whole seconds are taken for coarse.
    """
    return COARSE_SETTLED_NS if mtimeNS % 10**9 == 0 else SETTLED_NS


@implementer(IMaildrop)
class MaildirMaildrop:
    """
    One user's Maildir, used by one POP3 session.

    Listing (which may read new messages whole to measure them) and
    committing (which unlinks and renames many files) are blocking file
    work: give a C{runner} such as L{threadRunner} to do them outside the
    reactor thread.  Work that is certainly small (no new mail and a small
    C{cur/}; a commit of a few files) is done at once all the same.  Without
    a runner everything runs inline and returns its result directly.
    """

    def __init__(
        self,
        path: str,
        name: str,
        chunkSize: int = CHUNK_SIZE,
        runner: Optional[Runner] = None,
    ) -> None:
        self.path = path
        self.name = name
        self._run = runner or inline
        self._chunkSize = chunkSize
        self._cur = os.path.join(path, "cur")
        self._new = os.path.join(path, "new")
        self._lockFD: int | None = None
        self._pacer = GILPacer()
        # The file name of each message of the snapshot, by uid (shared
        # with the kept listing: never changed here), and the new names of
        # those renamed since.
        self._names: Mapping[str, str] = {}
        self._renamed: dict[str, str] = {}
        self._inThread = False

    def lock(self) -> None:
        """
        Create the Maildir if needed and lock it, or raise L{MaildropLocked}.

        The Maildir and its subdirectories must be real directories, not
        symbolic links, so that a user who can write to a Maildir cannot
        point it at another user's mail.
        """
        for directory in (self.path, self._cur, self._new, os.path.join(self.path, "tmp")):
            try:
                mode = os.lstat(directory).st_mode
            except FileNotFoundError:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                mode = os.lstat(directory).st_mode
            if not stat.S_ISDIR(mode):
                raise MaildropUnusable(f"{directory} is not a directory (a symbolic link?)")
        fd = os.open(
            os.path.join(self.path, LOCK_FILE),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MaildropLocked(f"maildrop of {self.name} is in use") from None
            raise
        self._lockFD = fd

    def listMessages(self) -> Union[Sequence[MessageInfo], Deferred[Sequence[MessageInfo]]]:
        """
        Move new mail to C{cur/} and snapshot C{cur/}: right away when that
        is certainly quick (no new mail to measure, a small C{cur/}), else
        through the runner.
        """
        if self._quickToList():
            # new/ was empty a moment ago: mail that lands there now waits
            # for the next session rather than being measured, perhaps
            # large, on this thread.
            return self._snapshot(deliverNew=False, inThread=False)
        listing: Union[Sequence[MessageInfo], Deferred[Sequence[MessageInfo]]]
        listing = self._run(self._snapshot, True, self._run is not inline)
        return listing

    def _quickToList(self) -> bool:
        """
        Whether listing costs at most a few milliseconds: C{new/} is empty
        and C{cur/} is a small directory (a directory's size grows with its
        entries; at most L{QUICK_DIRECTORY_SIZE} octets hold at most a few
        thousand names).
        """
        try:
            if os.stat(self._cur).st_size > QUICK_DIRECTORY_SIZE:
                return False
            with os.scandir(self._new) as entries:
                return not any(not entry.name.startswith(".") for entry in entries)
        except OSError:
            return False

    def _snapshot(self, deliverNew: bool = True, inThread: bool = False) -> MessageList:
        """
        Move new mail to C{cur/} (unless told not to) and snapshot C{cur/},
        parsing only the names that the listing kept from an earlier
        snapshot does not know.

        @param inThread: whether this runs in a thread of its own (so it
            may wait, and should yield the GIL now and then), not the
            reactor's.
        """
        self._inThread = inThread
        if deliverNew:
            takeNewMail(self._new, self._cur, self._pacer)
        listing = LISTINGS.take(self._cur)
        before = os.stat(self._cur)
        if listing.isEmpty() or listing.signature != _signature(before):
            if inThread:
                # In a worker thread: let the clock tick of a change made a
                # moment ago (by this very login, moving new mail) pass, so
                # that the listing can be trusted by the next session.
                left = before.st_mtime_ns + _settleTime(before.st_mtime_ns) - _nowNS()
                if 0 < left <= SETTLED_NS:
                    time.sleep(left / 1e9)
                    before = os.stat(self._cur)
            started = _nowNS()
            if listing.isEmpty():
                names, admit = listMessageFiles(self._cur, self._pacer), None
            else:
                names, admit = os.listdir(self._cur), self._isMessageFile
            listing.update(names, self._recordSizeInCur, self._accountName, admit, self._pause)
            # The listing is complete for this modification time of cur/ if
            # that time's clock tick was over when the listing began: any
            # later change of cur/ gives it a later one.
            settled = started - before.st_mtime_ns > _settleTime(before.st_mtime_ns)
            listing.signature = _signature(before) if settled else None
        LISTINGS.give(self._cur, listing)
        self._names = listing.fileNames
        self._renamed = {}
        return listing.messages

    def _accountName(self) -> None:
        self._pacer.account(NAME_WORK)

    def _pause(self) -> None:
        """
        Let other threads (the reactor's) have the GIL, if this work runs in
        a thread of its own.
        """
        if self._inThread:
            time.sleep(0)

    def _recordSizeInCur(self, fileName: str) -> Optional[str]:
        return recordSize(self._cur, fileName, fileName, self._cur, self._pacer)

    def _isMessageFile(self, name: str) -> bool:
        """
        Whether a name of C{cur/} is a message: a regular file whose name
        does not start with a dot.
        """
        if name.startswith("."):
            return False
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self._cur, name)).st_mode)
        except FileNotFoundError:
            return False

    def sendMessage(self, uid: str, consumer: IConsumer) -> Deferred[None]:
        """
        Stream one message file to the consumer.
        """
        try:
            try:
                fileObject = openMessage(os.path.join(self._cur, self._renamed.get(uid) or self._names[uid]))
            except FileNotFoundError:
                # Renamed (its flags changed) since the snapshot, or gone.
                fileObject = openMessage(os.path.join(self._cur, self._locate(uid)))
        except (KeyError, FileNotFoundError):
            return fail(MessageVanished(uid))
        except OSError as error:
            return fail(MaildropError(f"cannot read message {uid}: {error.strerror}"))
        return sendFile(fileObject, consumer, self._chunkSize)

    def commit(self, deleted: AbstractSet[str], seen: AbstractSet[str]) -> Optional[Deferred[None]]:
        """
        Mark retrieved messages seen, then unlink the deleted ones (right
        away for a few files, else through the runner).
        """
        result: Union[_Problems, Deferred[_Problems]]
        if len(deleted) + len(seen) <= QUICK_COMMIT_FILES:
            result = self._apply(deleted, seen)
        else:
            result = self._run(self._apply, deleted, seen)
        if isinstance(result, Deferred):
            return result.addCallback(self._logUnmarked)
        self._logUnmarked(result)
        return None

    def _logUnmarked(self, problems: _Problems) -> None:
        """
        Log, on the calling thread, the messages that could not be marked
        seen.
        """
        for uid, error in problems:
            log.warn("could not mark {uid} seen in {path}: {error}", uid=uid, path=self.path, error=error)

    def _apply(self, deleted: AbstractSet[str], seen: AbstractSet[str]) -> _Problems:
        """
        Mark retrieved messages seen, then unlink the deleted ones.

        Each removal is one C{unlink}, so a message is either intact or gone,
        whatever happens.  A message is unlinked by the name it had in the
        snapshot; only if that name is gone (its flags changed) is C{cur/}
        searched for its new one.
        """
        problems: _Problems = []
        for uid in seen - deleted:
            try:
                self._markSeen(uid)
            except (KeyError, OSError) as error:
                problems.append((uid, error))
        failed = []
        # In the order of the names, which is the order of delivery: files
        # made one after the other have neighbouring inodes, and freeing
        # them in that order touches each block of the inode table once
        # (measured: a tenth faster than in hash order for 1,000 files).
        for uid in sorted(deleted):
            try:
                self._unlink(uid)
            except OSError as error:
                failed.append(error)
        if failed:
            raise MaildropError(
                f"{len(failed)} of {len(deleted)} messages could not be removed: {failed[0].strerror}"
            )
        return problems

    def _unlink(self, uid: str) -> None:
        """
        Remove one message, wherever its flags have put it; a message already
        gone is no error.
        """
        fileName = self._renamed.get(uid) or self._names.get(uid)
        if fileName is None:
            return
        try:
            os.unlink(os.path.join(self._cur, fileName))
            return
        except FileNotFoundError:
            pass
        try:
            fileName = self._locate(uid)
        except KeyError:
            return
        try:
            os.unlink(os.path.join(self._cur, fileName))
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """
        Unlock the Maildir.
        """
        if self._lockFD is not None:
            os.close(self._lockFD)
            self._lockFD = None

    def _locate(self, uid: str) -> str:
        """
        Return the current file name of a message in C{cur/}, looking again
        if its flags were changed (and so its name) since the snapshot.

        @raise KeyError: if the message is gone.
        """
        fileName = self._renamed.get(uid) or self._names[uid]
        if os.path.exists(os.path.join(self._cur, fileName)):
            return fileName
        base, _ = splitName(fileName)
        for candidate in listMessageFiles(self._cur, self._pacer):
            if splitName(candidate)[0] == base:
                self._renamed[uid] = candidate
                return candidate
        raise KeyError(uid)

    def _markSeen(self, uid: str) -> None:
        """
        Add the Maildir "seen" flag to a message's name.

        @raise KeyError: if the message is gone.
        @raise OSError: if it cannot be renamed.
        """
        fileName = self._locate(uid)
        base, info = splitName(fileName)
        flags = info[2:] if info.startswith("2,") else ""
        if "S" in flags:
            return
        flags = "".join(sorted(flags + "S"))
        os.rename(os.path.join(self._cur, fileName), os.path.join(self._cur, f"{base}:2,{flags}"))
