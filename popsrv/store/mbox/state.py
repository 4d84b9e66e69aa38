"""
What popsrv keeps about each mbox spool in its own state directory
(C{<state>/mbox/}, mode 0700), never next to the spool: a spool's
directory (C{/var/mail}) may be writable by its users, who could plant
files there.  Each spool's files are named by a hash of its path:

    - C{<hash>.lock}: the session lock, C{flock}ed for a whole POP3 session
      (the second session gets C{[IN-USE]}, in any process); the kernel
      frees it when the process dies.  Delivery agents never see it, so
      they deliver during sessions.  It holds the spool's path, for the
      operator.
    - C{<hash>.journal}: the journal of a rewrite under way (see
      L{popsrv.store.mbox.journal}).
    - C{<hash>.seen}: the uids of the messages retrieved in earlier
      sessions (LAST), one a line after a line naming the spool.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from typing import Iterable, Set

from popsrv.errors import MaildropError, MaildropLocked, MaildropUnusable

__all__ = ["SpoolState"]

_OPEN_LOCK = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_SEEN_HEADER = b"popsrv mbox seen 1 "
# A uid is at most 70 octets; a line of more is not one.
_LONGEST_UID = 70


class SpoolState:
    """
    The files popsrv keeps about one spool.

    @ivar spoolPath: the spool's path.
    @ivar directory: where the files are (C{<state>/mbox}).
    @ivar key: the hash naming them.
    """

    def __init__(self, stateDirectory: str, spoolPath: str) -> None:
        self.spoolPath = spoolPath
        self.directory = os.path.join(stateDirectory, "mbox")
        self.key = hashlib.sha256(os.fsencode(spoolPath)).hexdigest()[:40]
        self._lock = -1

    def path(self, suffix: str) -> str:
        """
        The path of this spool's file with C{suffix} (C{"journal"}...).
        """
        return os.path.join(self.directory, f"{self.key}.{suffix}")

    def makeDirectory(self) -> None:
        """
        Make the state directory if it is missing.

        @raise MaildropError: if it cannot be made.
        """
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as error:
            raise MaildropError(f"cannot make the state directory {self.directory}: {error.strerror}") from None

    def lockSession(self, owner: str) -> None:
        """
        Take the session lock (C{flock}, exclusive, without waiting).

        @raise MaildropLocked: if another session holds it.
        @raise MaildropUnusable: if the lock file is not a regular file.
        """
        self.makeDirectory()
        path = self.path("lock")
        try:
            fd = os.open(path, _OPEN_LOCK, 0o600)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise MaildropUnusable(f"{path} is not a regular file") from None
            raise MaildropError(f"cannot open {path}: {error.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise MaildropUnusable(f"{path} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, os.fsencode(self.spoolPath) + b"\n", 0)
        except BaseException as error:
            os.close(fd)
            if isinstance(error, OSError) and error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MaildropLocked(f"maildrop of {owner} is in use") from None
            raise
        self._lock = fd

    def unlockSession(self) -> None:
        """
        Give up the session lock (closing its file unlocks it).
        """
        fd, self._lock = self._lock, -1
        if fd >= 0:
            os.close(fd)

    def readSeen(self) -> Set[str]:
        """
        The uids recorded as retrieved (none if the record is missing or
        is not one).
        """
        try:
            fd = os.open(self.path("seen"), _OPEN_READ)
        except OSError:
            return set()
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return set()
            with os.fdopen(os.dup(fd), "rb") as stream:
                if not stream.readline().startswith(_SEEN_HEADER):
                    return set()
                return {
                    line.rstrip(b"\n").decode("ascii", "replace") for line in stream
                    if 0 < len(line.rstrip(b"\n")) <= _LONGEST_UID
                }
        finally:
            os.close(fd)

    def writeSeen(self, uids: Iterable[str]) -> None:
        """
        Record the uids of the messages retrieved so far (replacing the
        record at once, with a rename).
        """
        path = self.path("seen")
        temporary = path + ".new"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(os.dup(fd), "wb") as stream:
                stream.write(_SEEN_HEADER + os.fsencode(self.spoolPath).replace(b"\n", b"?") + b"\n")
                stream.write(b"".join(uid.encode("ascii") + b"\n" for uid in sorted(uids)))
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def forgetSeen(self) -> None:
        """
        Remove the record of retrieved messages (the spool has none left).
        """
        try:
            os.unlink(self.path("seen"))
        except FileNotFoundError:
            pass
