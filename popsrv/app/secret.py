"""
The server's persistent secret: 32 random octets in a file made at the
first start (mode 0600), from which popsrv derives the keys that must stay
the same across restarts (the placeholder SCRAM salts of unknown users).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from typing import Optional

__all__ = [
    "SECRET_OCTETS", "SecretError", "defaultSecretPath", "defaultStateDirectory", "deriveKey", "loadSecret", "wipe",
]

SECRET_OCTETS = 32


class SecretError(Exception):
    """The secret file cannot be read or made."""


def defaultStateDirectory(uid: Optional[int] = None) -> str:
    """
    The directory where popsrv keeps its state by default (its secret, the
    journals and records of mbox spools): the service's state directory
    when a service manager gives one (systemd's C{StateDirectory=} sets
    C{$STATE_DIRECTORY}), else C{/var/lib/popsrv} for root, else the
    user's state directory (C{$XDG_STATE_HOME/popsrv}, or
    C{~/.local/state/popsrv}).

    @param uid: the user popsrv runs as (by default, this process's).
    """
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return given
    if (os.geteuid() if uid is None else uid) == 0:
        return "/var/lib/popsrv"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "popsrv")


def defaultSecretPath(uid: Optional[int] = None) -> str:
    """
    Where the secret lives by default: C{secret} in the state directory
    (see L{defaultStateDirectory}).
    """
    return os.path.join(defaultStateDirectory(uid), "secret")


def loadSecret(path: str) -> bytearray:
    """
    Read the secret at C{path}, making it (and its directory, mode 0700)
    first if there is none.  The file must be a regular file of at least
    L{SECRET_OCTETS} octets that only its owner can read.  The secret comes
    in a buffer the caller may wipe (see L{wipe}).

    @raise SecretError: it cannot be read or made, or is not fit.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return _read(path)  # made meanwhile by another process
    except OSError as error:
        raise SecretError(f"cannot make the secret file {path}: {error.strerror}")
    try:
        os.write(fd, os.urandom(SECRET_OCTETS))
        os.fsync(fd)
    finally:
        os.close(fd)
    return _read(path)


def _read(path: str) -> bytearray:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise SecretError(f"cannot read the secret file {path}: {error.strerror}")
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise SecretError(f"the secret file {path} is not a regular file")
        if status.st_mode & 0o077:
            raise SecretError(f"the secret file {path} can be read by others than its owner (chmod 600 it)")
        # Read into a buffer the caller can wipe once it has what it needs.
        secret = bytearray(4096)
        del secret[os.readv(fd, [secret]):]
    finally:
        os.close(fd)
    if len(secret) < SECRET_OCTETS:
        raise SecretError(f"the secret file {path} holds fewer than {SECRET_OCTETS} octets")
    return secret


def wipe(secret: bytearray) -> None:
    """
    Overwrite C{secret} with zeros (before forking processes that do not
    need it, say).
    """
    secret[:] = bytes(len(secret))


def deriveKey(secret: bytes, purpose: str) -> bytes:
    """A 32-octet key for one C{purpose}, derived from the secret."""
    return hmac.new(secret, b"popsrv key: " + purpose.encode("ascii"), hashlib.sha256).digest()
