"""
Whether files and directories that the options name can be used: by this
process (L{readableFileProblem}, at startup), or by the user popsrv will
serve as (L{Identity}, as C{twistd -u USER -g GROUP} takes it), computed
from the files' owners and modes.  Each answer is a short reason for a
one-line message, or C{None} when all is well.

The modes are read, not tried: an access control list or a capability that
grants more is not seen, and C{root} may do anything.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from typing import FrozenSet, List, Optional, Tuple

import attr

__all__ = [
    "Identity",
    "currentIdentity",
    "identityFor",
    "readableBy",
    "readableFileProblem",
    "unusableDirectory",
    "unwritableDirectory",
]

READ, WRITE, SEARCH = 4, 2, 1


def _reason(error: OSError) -> str:
    """
    An C{OSError} in a few lower-case words: C{no such file},
    C{permission denied}...
    """
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file"
    text = error.strerror or os.strerror(error.errno or 0) or type(error).__name__
    return text[:1].lower() + text[1:]


def readableFileProblem(path: str) -> Optional[str]:
    """
    Why this process cannot read the regular file at C{path} (C{no such
    file}, C{a directory, not a file}, C{cannot read it: permission
    denied}...), or C{None} if it can.

    A FIFO or a device is refused before it is opened, so nothing blocks.
    """
    if not path.strip():
        return "needs the path of a file"
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno == errno.EACCES:
            return "cannot reach it: permission denied"
        return _reason(error)
    if stat.S_ISDIR(status.st_mode):
        return "a directory, not a file"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return f"cannot read it: {_reason(error)}"
    os.close(descriptor)
    return None


@attr.s(frozen=True, auto_attribs=True)
class Identity:
    """
    Whom a process acts as, for file permissions.

    @ivar uid: its (effective) user id.
    @ivar groups: its effective group id and supplementary groups.
    @ivar name: the user's name, or C{uid N} for an id without one.
    """

    uid: int
    groups: FrozenSet[int]
    name: str

    def __str__(self) -> str:
        return f"user {self.name}"


def _userName(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def currentIdentity() -> Identity:
    """
    The identity of this process.
    """
    uid = os.geteuid()
    return Identity(uid, frozenset(os.getgroups()) | {os.getegid()}, _userName(uid))


def _passwdEntry(user: str) -> pwd.struct_passwd:
    """
    The passwd entry of a user name or number.

    @raise ValueError: if there is none.
    """
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():
            raise ValueError(f"no user has the id {user} (twistd needs its passwd entry)")
        raise ValueError(f"no such user: {user!r}")


def _groupId(group: str) -> int:
    """
    The id of a group name or number.

    @raise ValueError: if there is no such group.
    """
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {group!r}")


def identityFor(user: Optional[str] = None, group: Optional[str] = None) -> Identity:
    """
    The identity that C{twistd -u USER -g GROUP} (names or numbers) takes
    before it serves, or this process's without them: the user, the group
    (by default the user's own), and with a new user the groups it is a
    member of; with only a group, this process's user and supplementary
    groups.

    @raise ValueError: for an unknown user or group, saying which.
    """
    if user is None and group is None:
        return currentIdentity()
    entry = _passwdEntry(user) if user is not None else None
    if group is not None:
        gid = _groupId(group)
    else:
        gid = entry.pw_gid if entry is not None else os.getegid()
    if entry is not None and entry.pw_uid != os.getuid():
        # twistd's initgroups: the user's groups, and the group given.
        return Identity(entry.pw_uid, frozenset(os.getgrouplist(entry.pw_name, gid)) | {gid}, entry.pw_name)
    uid = os.geteuid() if entry is None else entry.pw_uid
    return Identity(uid, frozenset(os.getgroups()) | {gid}, _userName(uid))


def _permitted(status: os.stat_result, identity: Identity, want: int) -> bool:
    """
    Whether the mode of a file lets C{identity} do C{want} (L{READ},
    L{WRITE}, L{SEARCH}, or'ed): the owner's bits for its owner, the
    group's for its group's members, the others' for anyone else.
    """
    if identity.uid == 0:
        return True
    if status.st_uid == identity.uid:
        bits = status.st_mode >> 6
    elif status.st_gid in identity.groups:
        bits = status.st_mode >> 3
    else:
        bits = status.st_mode
    return bits & want == want


def _describe(path: str, status: os.stat_result) -> str:
    """
    A path with its owner, group and mode, as C{ls} would show them.
    """
    owner = _userName(status.st_uid)
    try:
        group = grp.getgrgid(status.st_gid).gr_name
    except KeyError:
        group = str(status.st_gid)
    return f"{path} ({owner}:{group}, mode {stat.S_IMODE(status.st_mode):04o})"


def _walk(path: str) -> Tuple[List[Tuple[str, os.stat_result]], List[str]]:
    """
    The directories from C{/} down to C{path} (links resolved) that exist,
    each with its status, and the rest of the path that does not.

    @raise OSError: if one cannot be looked at.
    """
    parts = [part for part in os.path.realpath(path).split("/") if part]
    existing: List[Tuple[str, os.stat_result]] = []
    for index in range(len(parts) + 1):
        current = "/" + "/".join(parts[:index])
        try:
            status = os.stat(current)
        except FileNotFoundError:
            return existing, parts[index - 1:]
        existing.append((current, status))
        if not stat.S_ISDIR(status.st_mode):
            return existing, parts[index:]
    return existing, []


def _unreachable(existing: List[Tuple[str, os.stat_result]], identity: Identity) -> Optional[str]:
    """
    Why C{identity} cannot reach the last of C{existing}: the first
    directory above it that it may not search.
    """
    for path, status in existing[:-1]:
        if not _permitted(status, identity, SEARCH):
            return f"{identity} cannot reach it: no search permission on {_describe(path, status)}"
    return None


def readableBy(path: str, identity: Identity) -> Optional[str]:
    """
    Why C{identity} cannot read the file at C{path} (which exists), or
    C{None} if it can.
    """
    try:
        existing, missing = _walk(path)
    except OSError as error:
        return f"cannot look at it: {_reason(error)}"
    if missing or not existing:
        return "no such file"
    unreachable = _unreachable(existing, identity)
    if unreachable is not None:
        return unreachable
    where, status = existing[-1]
    if not _permitted(status, identity, READ):
        return f"{identity} cannot read {_describe(where, status)}"
    return None


def _readOnly(path: str) -> bool:
    """
    Whether the file system of C{path} is mounted read-only.
    """
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def unusableDirectory(path: str, identity: Identity) -> Optional[str]:
    """
    Why C{identity} can neither use the directory at C{path} nor make it,
    or C{None}: it is a directory C{identity} can reach and enter, or it
    is missing and C{identity} can make it (and any directories missing
    above it).
    """
    try:
        existing, missing = _walk(path)
    except OSError as error:
        return f"cannot look at it: {_reason(error)}"
    last, status = existing[-1]
    if not stat.S_ISDIR(status.st_mode):
        return f"cannot be made: {last} is not a directory" if missing else "not a directory"
    unreachable = _unreachable(existing, identity)
    if unreachable is not None:
        return unreachable
    if not missing:
        if not _permitted(status, identity, SEARCH):
            return f"{identity} cannot enter {_describe(last, status)}"
        return None
    if not _permitted(status, identity, WRITE | SEARCH):
        return f"does not exist, and {identity} cannot make directories in {_describe(last, status)}"
    if _readOnly(last):
        return f"does not exist, and {last} is on a read-only file system"
    return None


def unwritableDirectory(path: str, identity: Identity) -> Optional[str]:
    """
    Why C{identity} cannot make files and directories in the directory at
    C{path}, or C{None}: it can, or C{path} is missing and would be made
    by C{identity} (check L{unusableDirectory} first).
    """
    try:
        existing, missing = _walk(path)
    except OSError as error:
        return f"cannot look at it: {_reason(error)}"
    if missing:
        return None
    last, status = existing[-1]
    if not _permitted(status, identity, WRITE | SEARCH):
        return f"{identity} cannot make directories in {_describe(last, status)}"
    if _readOnly(last):
        return f"{last} is on a read-only file system"
    return None
