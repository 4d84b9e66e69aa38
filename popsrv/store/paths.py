"""
Opening the directory of a maildrop without following symbolic links: from
the operator's trusted base directory (a realm template's fixed part) down,
one directory at a time, each opened relative to the one above it.

A user who can write to a directory on the way (their home, their Maildir,
the directory of their mbox spool) could otherwise replace a directory by a
link to another user's and have popsrv serve or change that user's mail.
Both stores use this: the Maildir store creates what is missing, the mbox
store does not (a missing directory is an empty maildrop).
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Optional

from popsrv.errors import MaildropUnusable

__all__ = ["NOT_A_DIRECTORY_ERRORS", "NOT_A_FILE_ERRORS", "OPEN_DIRECTORY", "openDirectory", "openExisting", "walk"]

OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# What opening a name that is not a regular file (any more) fails with:
# a symbolic link with O_NOFOLLOW, a socket, a device without a driver, a
# directory opened for writing.
NOT_A_FILE_ERRORS = (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.ENODEV, errno.EISDIR)
# What opening a directory that is not a directory fails with: a symbolic
# link with O_NOFOLLOW | O_DIRECTORY (ELOOP on some systems), a file.
NOT_A_DIRECTORY_ERRORS = (errno.ENOTDIR, errno.ELOOP)


def openExisting(name: str, shown: str, parent: Optional[int]) -> int:
    """
    Open a directory without following a link: C{name} relative to the
    descriptor C{parent}, or, without one, a path.

    @param shown: the directory's path, for errors.
    @raise MaildropUnusable: if it is not a directory.
    @raise FileNotFoundError: if it is missing.
    """
    try:
        return os.open(name, OPEN_DIRECTORY, dir_fd=parent)
    except OSError as error:
        if error.errno in NOT_A_DIRECTORY_ERRORS:
            raise MaildropUnusable(f"{shown} is not a directory (a symbolic link?)") from None
        raise


def openDirectory(name: str, shown: str, parent: Optional[int] = None, create: bool = True) -> int:
    """
    Open a directory as L{openExisting} does, creating it (mode 0700) if
    it is missing and C{create} is true, and, given a path, its missing
    parents too.

    @raise FileNotFoundError: if it is missing and C{create} is false.
    """
    try:
        return openExisting(name, shown, parent)
    except FileNotFoundError:
        if not create:
            raise
    if parent is None:
        os.makedirs(name, mode=0o700, exist_ok=True)
    else:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode=0o700, dir_fd=parent)
    return openExisting(name, shown, parent)


def walk(path: str, trusted: Optional[str], create: bool = True) -> int:
    """
    Open the directory C{path}: from C{trusted} (opened as its path says,
    links and all), one directory at a time, none of them a link; without
    C{trusted}, or if C{path} is not C{trusted} or below it, by its path
    with only its last part checked.  Missing directories are made (mode
    0700) if C{create} is true.

    @return: the directory's descriptor, for the caller to close.
    @raise MaildropUnusable: if a directory on the way is not a directory
        (a symbolic link, say).
    @raise FileNotFoundError: if one is missing and C{create} is false.
    """
    if trusted is None:
        return openDirectory(path, path, create=create)
    relative = os.path.relpath(path, trusted)
    if relative.split(os.sep)[0] == os.pardir:
        return openDirectory(path, path, create=create)
    try:
        fd = os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            raise
        os.makedirs(trusted, mode=0o700, exist_ok=True)
        fd = os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if relative == os.curdir:
        # The trusted directory itself (as /var/mail for /var/mail/%u): the
        # operator's, which may be a link (to /var/spool/mail).
        return fd
    shown = trusted
    try:
        for part in relative.split(os.sep):
            shown = os.path.join(shown, part)
            parent, fd = fd, openDirectory(part, shown, parent=fd, create=create)
            os.close(parent)
    except BaseException:
        os.close(fd)
        raise
    return fd
