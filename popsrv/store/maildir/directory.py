"""
A Maildir opened for one session: the Maildir directory, C{cur/} and
C{new/} are opened once, at lock time, without following symbolic links,
and every later file operation (listing, stat, open, rename, unlink) is
relative to those descriptors.

A user who can write to the Maildir may rename or link anything in place
of those directories during a session; the session goes on using the
directories it opened, and never reaches another user's mail or a file
outside the Maildir by a name resolved again.  Only regular files are
read as messages: a name is opened without blocking (a FIFO would block an
open for ever) and without following links, and what it opened is refused
unless it is a regular file.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import stat
import threading
from typing import BinaryIO, Callable, List, Optional, Tuple

from popsrv.errors import MaildropError, MaildropLocked, MaildropUnusable
from popsrv.store.maildir.intake import (
    NOT_A_FILE_ERRORS,
    NotAFile,
    entriesOf,
    listDirectory,
    openRegular,
)
from popsrv.store.paths import openDirectory as _openDirectory
from popsrv.store.paths import walk as _walk

__all__ = ["LOCK_FILE", "Directory", "NotAFile", "OpenedMaildir"]

LOCK_FILE = "popsrv.lock"
OPEN_LOCK = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _nothing(count: int) -> None:
    """Do nothing (the default pacing of a listing)."""


class Directory:
    """
    One directory of an opened Maildir (C{cur/} or C{new/}), used through
    its descriptor only.

    @ivar label: its name in the Maildir, for logs.
    """

    def __init__(self, fd: int, label: str) -> None:
        self._fd = fd
        self.label = label

    def status(self) -> os.stat_result:
        """
        The directory's own status (C{fstat}).
        """
        return os.fstat(self._fd)

    def fileno(self) -> int:
        """
        The directory's descriptor (for a helper process to inherit).
        """
        return self._fd

    def listFiles(self, account: Callable[[int], None] = _nothing) -> Tuple[List[str], List[str]]:
        """
        List the directory: the names of its regular files, and the names of
        what else it holds (links, FIFOs, devices, directories); names that
        start with a dot are neither.  See
        L{popsrv.store.maildir.intake.listDirectory}.

        @param account: called with the number of entries about to be
            looked at, every so often (to pace the work).
        """
        return listDirectory(self._fd, account)

    def looksEmpty(self, limit: int) -> bool:
        """
        Whether the directory holds nothing but names that start with a dot,
        looking at C{limit} entries at most (it is taken for not empty if
        there are more).
        """
        with entriesOf(self._fd) as entries:
            for looked, entry in enumerate(entries):
                if looked >= limit or not entry.name.startswith("."):
                    return False
        return True

    def holdsAtLeast(self, count: int) -> bool:
        """
        Whether the directory has C{count} entries or more (any name but
        C{.} and C{..}), reading C{count} at most.
        """
        with entriesOf(self._fd) as entries:
            return sum(1 for _ in itertools.islice(entries, count)) >= count

    def openMessage(self, name: str) -> BinaryIO:
        """
        Open a regular file of the directory for reading, as a blocking file
        object.

        It is opened without following a link, without blocking (a FIFO
        opens at once) and without becoming a controlling terminal, and
        used only if, once open, it is a regular file: its name is looked
        up once, by the open itself (no C{stat} first on the way of RETR).
        See L{popsrv.store.maildir.intake.openRegular}.

        @raise NotAFile: if it is not a regular file.
        @raise FileNotFoundError: if it is gone.
        """
        fd, _ = openRegular(self._fd, name)
        try:
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    def readWhole(self, name: str, limit: int) -> Optional[bytes]:
        """
        Read a regular file of the directory whole, if it holds at most
        C{limit} octets; return C{None} if it holds more.  Opened as by
        L{openMessage}; a file of the size C{fstat} gives is one C{read} (a
        short read of a regular file is its end).

        @raise NotAFile: if it is not a regular file.
        @raise FileNotFoundError: if it is gone.
        """
        fd, status = openRegular(self._fd, name)
        try:
            size = status.st_size
            if size > limit:
                return None
            data = os.read(fd, size + 1)
            if len(data) <= size:
                return data
            # It grew since: read on, to its end or past the limit.
            parts = [data]
            total = len(data)
            while total <= limit:
                chunk = os.read(fd, limit + 1 - total)
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
            return b"".join(parts) if total <= limit else None
        finally:
            os.close(fd)

    def rename(self, name: str, target: Directory, newName: str) -> None:
        """
        Rename an entry of this directory to C{newName} in C{target} (this
        directory or another of the same Maildir).
        """
        os.rename(name, newName, src_dir_fd=self._fd, dst_dir_fd=target._fd)

    def unlink(self, name: str) -> None:
        """
        Remove an entry of this directory (a link itself, never its target).
        """
        os.unlink(name, dir_fd=self._fd)

    def close(self) -> None:
        """
        Close the descriptor.
        """
        os.close(self._fd)


def _lockExclusively(root: int, path: str, owner: str) -> int:
    """
    Open the lock file of the Maildir whose descriptor is C{root} and lock
    it (C{flock}, exclusive); return its descriptor.

    @raise MaildropLocked: if another session holds the lock.
    @raise MaildropUnusable: if the lock file is not a regular file.
    """
    try:
        fd = os.open(LOCK_FILE, OPEN_LOCK, 0o600, dir_fd=root)
    except OSError as error:
        if error.errno in NOT_A_FILE_ERRORS:
            raise MaildropUnusable(f"{os.path.join(path, LOCK_FILE)} is not a regular file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MaildropUnusable(f"{os.path.join(path, LOCK_FILE)} is not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as error:
        os.close(fd)
        if isinstance(error, OSError) and error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise MaildropLocked(f"maildrop of {owner} is in use") from None
        raise
    return fd


class OpenedMaildir:
    """
    A Maildir opened and locked for one session: descriptors of the
    Maildir, C{cur/} and C{new/}, and of its lock file (C{flock} on
    C{popsrv.lock}, exclusive across processes and freed by the kernel when
    the process dies).

    Work on it (possibly in a thread) runs within L{using}; L{close} closes
    the descriptors once no such work is left, so that none is ever closed
    (and its number reused) under work still using it.

    @ivar cur: C{cur/}.
    @ivar new: C{new/}.
    @ivar top: the Maildir itself, for the files other servers keep there
        (not to be closed: L{close} does).
    """

    # How many are open (locked) in this process, and how many were ever
    # opened, for L{lockedCount} and L{openings}.
    _locked = 0
    _openings = 0
    _counting = threading.Lock()

    def __init__(self, root: int, cur: Directory, new: Directory, lock: int) -> None:
        with OpenedMaildir._counting:
            OpenedMaildir._locked += 1
            OpenedMaildir._openings += 1
        self._root = root
        self.top = Directory(root, ".")
        self.cur = cur
        self.new = new
        self._lock = lock
        self._mutex = threading.Lock()
        self._users = 0
        self._closing = False

    @classmethod
    def open(cls, path: str, owner: str, trusted: Optional[str] = None) -> OpenedMaildir:
        """
        Open the Maildir at C{path}, creating it and its C{cur/}, C{new/}
        and C{tmp/} if needed, and lock it.

        @param owner: who the maildrop belongs to, for errors.
        @param trusted: a directory above C{path} whose own path may hold
            symbolic links (the operator's): each directory below it is
            opened in turn without following one.  By default only the
            Maildir itself is.
        @raise MaildropUnusable: if the Maildir, a directory between it and
            C{trusted}, or one of its subdirectories is not a directory (a
            symbolic link, say).
        @raise MaildropLocked: if another session holds its lock.
        """
        opened: List[int] = []
        try:
            root = _walk(path, trusted)
            opened.append(root)
            for name in ("cur", "new", "tmp"):
                opened.append(_openDirectory(name, os.path.join(path, name), root))
            # tmp/ is for delivery agents; it only has to be a directory.
            os.close(opened.pop())
            lock = _lockExclusively(root, path, owner)
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        _, cur, new = opened
        return cls(root, Directory(cur, "cur"), Directory(new, "new"), lock)

    def using(self) -> OpenedMaildir:
        """
        Use the Maildir for a piece of work, as C{with maildir.using():}:
        its descriptors stay open until the work is done, even if L{close}
        is called meanwhile.  (The Maildir is its own context manager: a
        generator-made one cost a tenth of the time of a small RETR.)

        @raise MaildropError: (on entering) if it was closed already.
        """
        return self

    def __enter__(self) -> OpenedMaildir:
        with self._mutex:
            if self._closing:
                raise MaildropError("the maildrop was released")
            self._users += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._mutex:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self._closeDescriptors()

    def close(self) -> None:
        """
        Unlock and close the Maildir: now, or when the last work using it
        is done.  Closing it again does nothing.
        """
        with self._mutex:
            if self._closing:
                return
            self._closing = True
            idle = self._users == 0
        with OpenedMaildir._counting:
            OpenedMaildir._locked -= 1
        if idle:
            self._closeDescriptors()

    @classmethod
    def lockedCount(cls) -> int:
        """
        How many Maildirs sessions of this process hold open (locked) now.
        """
        return cls._locked

    @classmethod
    def openings(cls) -> int:
        """
        How many Maildirs sessions of this process have opened (locked) so
        far: a difference between two readings counts the logins between.
        """
        return cls._openings

    def _closeDescriptors(self) -> None:
        """
        Close every descriptor, the lock file's last, unlocking it first:
        a process started meanwhile by another thread (a helper taking new
        mail) holds a copy of every descriptor from its C{fork} to its
        C{exec}, and closing ours alone would leave the lock held that long.
        """
        self.cur.close()
        self.new.close()
        os.close(self._root)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        finally:
            os.close(self._lock)
