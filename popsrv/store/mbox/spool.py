"""
An mbox spool opened for one session: its directory, opened once at login
from the operator's trusted base directory down without following a
symbolic link (see L{popsrv.store.paths}), and the spool file in it,
opened without following a link, without blocking and without becoming a
controlling terminal, and used only if it is a regular file with one link.

The directory may be writable by the spool's owner (C{/var/mail} often
is, for dotlocks): whatever they rename or link there, the session reads
and rewrites only a regular file it found at the spool's name, and every
later look at that name (another program may have replaced the spool)
goes through the directory it opened.
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Tuple

from popsrv.errors import MaildropError, MaildropUnusable
from popsrv.store.paths import NOT_A_FILE_ERRORS, walk

__all__ = ["OpenedSpool", "SpoolFile"]

_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class SpoolFile:
    """
    The spool file, open.

    @ivar fd: its descriptor (open for reading and writing, or only for
        reading if popsrv may not write it).
    @ivar writable: whether it is open for writing.
    @ivar identity: its device and inode.
    """

    def __init__(self, fd: int, writable: bool, identity: Tuple[int, int]) -> None:
        self.fd = fd
        self.writable = writable
        self.identity = identity

    def size(self) -> int:
        """
        Its size now.
        """
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        """
        Close it.
        """
        os.close(self.fd)


def _openFile(directory: int, name: str, shown: str) -> Optional[SpoolFile]:
    """
    Open the spool C{name} in C{directory}, for reading and writing if
    popsrv may; C{None} if there is none.

    @raise MaildropUnusable: if it is not a regular file with one link.
    """
    writable = True
    try:
        try:
            fd = os.open(name, os.O_RDWR | _OPEN, dir_fd=directory)
        except PermissionError:
            writable = False
            fd = os.open(name, os.O_RDONLY | _OPEN, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in NOT_A_FILE_ERRORS:
            raise MaildropUnusable(f"{shown} is not a regular file (a symbolic link, a directory?)") from None
        raise MaildropError(f"cannot open {shown}: {error.strerror}") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise MaildropUnusable(f"{shown} is not a regular file (a FIFO, a device?)")
        if status.st_nlink != 1:
            raise MaildropUnusable(f"{shown} has {status.st_nlink} links (a hard link to another file?)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return SpoolFile(fd, writable, (status.st_dev, status.st_ino))


class OpenedSpool:
    """
    A spool's directory and file, opened for one session.

    @ivar path: the spool's path.
    @ivar name: its name in its directory.
    @ivar directory: the directory's descriptor, or C{None} if there is no
        such directory (then there is no spool: an empty maildrop).
    @ivar file: the spool file, or C{None} if there is none (yet).
    """

    def __init__(self, path: str, directory: Optional[int], file: Optional[SpoolFile]) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.directory = directory
        self.file = file

    @classmethod
    def open(cls, path: str, trusted: Optional[str]) -> OpenedSpool:
        """
        Open the spool at C{path}: its directory from C{trusted} down (see
        L{walk}; nothing is made), then the file.

        @raise MaildropUnusable: if a directory on the way is not one, or
            the spool is not a regular file with one link.
        """
        try:
            directory: Optional[int] = walk(os.path.dirname(path), trusted, create=False)
        except FileNotFoundError:
            return cls(path, None, None)
        except OSError as error:
            raise MaildropError(f"cannot open the directory of {path}: {error.strerror}") from None
        assert directory is not None
        try:
            return cls(path, directory, _openFile(directory, os.path.basename(path), path))
        except BaseException:
            os.close(directory)
            raise

    def current(self) -> Optional[Tuple[int, int]]:
        """
        The device and inode the spool's name refers to now, if it names a
        regular file; C{None} if it names nothing.

        @raise MaildropUnusable: if it names something else.
        """
        if self.directory is None:
            return None
        try:
            status = os.stat(self.name, dir_fd=self.directory, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(status.st_mode):
            raise MaildropUnusable(f"{self.path} is not a regular file (a symbolic link, a directory?)")
        return (status.st_dev, status.st_ino)

    def refresh(self) -> bool:
        """
        Make L{file} the file the spool's name refers to now (another
        program may have replaced the spool, or made it); return whether
        it changed.
        """
        if self.directory is None:
            return False
        now = self.current()
        if self.file is not None and now == self.file.identity:
            return False
        if self.file is None and now is None:
            return False
        opened = _openFile(self.directory, self.name, self.path)
        if self.file is not None:
            self.file.close()
        self.file = opened
        return True

    def close(self) -> None:
        """
        Close the file and the directory.
        """
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.directory is not None:
            os.close(self.directory)
            self.directory = None

