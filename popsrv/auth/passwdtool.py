"""
C{python -m popsrv passwd}: add, change, remove and list the users of a
passwd file (see L{popsrv.auth.passwdfile}) without editing it by hand.

The password is asked for twice at the terminal, or read as one line from
standard input when that is not a terminal (for scripts); never from the
command line, where other users could see it.

A change is made under an exclusive lock (C{flock} on C{FILE.lock}, across
processes), taken once the password has been given: the file is read,
changed and replaced while no other run of the tool can change it, so two
runs at the same time never undo each other.  The file is replaced
atomically (a temporary file in the same directory, flushed to disk, then
renamed over it), so a running popsrv reads either the old version or the
new one; the new file keeps the old one's mode, owner and group, or the
change is refused.  When FILE is a symbolic link, the file it points to is
replaced and the link is left as it is.  Comments, blank lines and the
other users' lines are kept as they are.

A user is added, or given a new password, only if the realm could let them
log in: their name must follow the rules of L{popsrv.names} (no control or
invisible characters, a valid domain, a safe directory name).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import getpass
import os
import stat
import sys
import tempfile
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator, List, Optional, TextIO, Union

from popsrv.auth import schemes
from popsrv.auth.passwdfile import PasswdFileError, entryUser, parsePasswd
from popsrv.names import UnsafeMailboxName, canonicalLogin, mailboxName

__all__ = ["OwnerNotKept", "lockFor", "main", "writeAtomically"]

NEW_FILE_MODE = 0o600
LOCK_SUFFIX = ".lock"


class ToolError(Exception):
    """
    The command cannot be carried out; the message says why.
    """


class OwnerNotKept(PermissionError):
    """
    The replacement of a file cannot be given the file's owner and group:
    a user other than root cannot give a file to another user, nor to a
    group they are not a member of.
    """


def _keepOwner(descriptor: int, status: os.stat_result) -> None:
    """
    Give the open file C{descriptor} the owner and group in C{status}.

    @raise OwnerNotKept: if that is not allowed.
    """
    current = os.fstat(descriptor)
    owner = status.st_uid if status.st_uid != current.st_uid else -1
    group = status.st_gid if status.st_gid != current.st_gid else -1
    if owner == group == -1:
        return
    try:
        os.fchown(descriptor, owner, group)
    except PermissionError:
        raise OwnerNotKept(
            errno.EPERM,
            f"the new file would not keep its owner {status.st_uid} and group {status.st_gid} "
            "(run this as root, or as its owner and a member of its group)",
        ) from None


def writeAtomically(path: str, data: bytes) -> None:
    """
    Replace the file at C{path} with C{data} atomically: write a new file
    in the same directory, flush it to disk and rename it over the old one.

    The new file keeps the old one's owner, group and mode (set-user-ID,
    set-group-ID and sticky bits included); a new file gets mode 0600.  If
    C{path} is a symbolic link, the file it points to is replaced (the new
    file is written next to it) and the link stays.

    @raise OwnerNotKept: if the new file cannot have the old one's owner and
        group; the old file is left as it was.
    @raise OSError: if the file cannot be written.
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    try:
        status: Optional[os.stat_result] = os.stat(target)
    except FileNotFoundError:
        status = None
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            if status is not None:
                # Owner first: changing it may clear the set-ID bits.
                _keepOwner(stream.fileno(), status)
            os.fchmod(stream.fileno(), NEW_FILE_MODE if status is None else stat.S_IMODE(status.st_mode))
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    directoryDescriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directoryDescriptor)
    finally:
        os.close(directoryDescriptor)


@contextmanager
def lockFor(path: str, waiting: Optional[TextIO] = None) -> Iterator[str]:
    """
    Hold the exclusive lock of the passwd file C{path}, across processes,
    for the time of the C{with} block, which gets the path of the lock file.
    If another process holds it, say so on C{waiting} and wait for it.

    The lock is an C{flock} on C{FILE.lock}, beside the file C{path} names
    (the target of a symbolic link), made if missing and never removed.
    Not on the passwd file itself: each change replaces that file with a
    new one by a rename, so a process waiting for a lock on it would get a
    lock on the old file, no longer the one at C{path}, and then read that
    stale version.  The lock file is never replaced, and never removed (a
    run would otherwise lock a removed file while another made a new one),
    so every run locks the same file.  It is readable by those who may read
    or change the passwd file (its mode without the bits for others).

    @raise OSError: if the lock file cannot be opened or made.
    """
    target = os.path.realpath(path)
    lockPath = target + LOCK_SUFFIX
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode) & 0o660
    except FileNotFoundError:
        mode = NEW_FILE_MODE
    descriptor = os.open(lockPath, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting.write(f"popsrv passwd: waiting for {lockPath} (another run is changing {target})\n")
                waiting.flush()
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield lockPath
    finally:
        # Closing the only descriptor of the open file releases the lock.
        os.close(descriptor)


def _readLines(path: str, mustExist: bool) -> List[str]:
    """
    The file's lines with their line ends; it must parse.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        if mustExist:
            raise ToolError(f"{path} does not exist")
        return []
    except OSError as error:
        raise ToolError(f"cannot read {path}: {error.strerror or error}")
    try:
        parsePasswd(data)
    except PasswdFileError as error:
        raise ToolError(f"{path} {error}; fix it first")
    # Lines end at LF only, as the server reads them (not at the other line
    # breaks str.splitlines knows, such as form feed).
    *complete, last = data.decode("utf-8").split("\n")
    return [line + "\n" for line in complete] + ([last] if last else [])


def _find(lines: List[str], user: str) -> Optional[int]:
    for index, line in enumerate(lines):
        if entryUser(line.rstrip("\r\n")) == user:
            return index
    return None


def _checkUser(user: str) -> None:
    if not user or user != user.strip() or user.startswith("#") or any(c in user for c in ":\r\n"):
        raise ToolError(f"{user!r} cannot be a user name (no ':', line breaks, surrounding spaces or leading '#')")


def _checkLogin(user: str) -> None:
    """
    Refuse a user whose every login the realm would refuse, whatever the
    Maildir template (see L{popsrv.names}).
    """
    try:
        canonicalLogin(mailboxName(user))
    except UnsafeMailboxName as error:
        raise ToolError(f"{user!r} could never log in: {error}")


def _askPassword(stdin: TextIO, stderr: TextIO) -> bytes:
    """
    The new password: asked twice at a terminal, else one line of stdin.
    """
    if stdin.isatty():
        first = getpass.getpass("Password: ", stream=stderr)
        if getpass.getpass("Again: ", stream=stderr) != first:
            raise ToolError("the passwords differ")
        password = first.encode("utf-8")
    else:
        source: Union[BinaryIO, TextIO] = getattr(stdin, "buffer", None) or stdin
        line = source.readline()
        if isinstance(line, str):
            line = line.encode("utf-8")
        password = line.rstrip(b"\n").rstrip(b"\r")
    if not password:
        raise ToolError("the password is empty")
    return password


def _entry(user: str, secret: str, old: Optional[str]) -> str:
    """
    A user's line with a new secret, keeping an old line's further fields
    and line end.
    """
    ending, rest = "\n", ""
    if old is not None:
        body = old.rstrip("\r\n")
        ending = old[len(body):] or "\n"
        fields = body.split(":", 2)
        rest = ":" + fields[2] if len(fields) == 3 else ""
    return f"{user}:{secret}{rest}{ending}"


def _checkPresence(lines: List[str], user: str, path: str, adding: bool) -> Optional[int]:
    """
    The index of C{user}'s line, which must be missing to add the user and
    present to change their password.
    """
    index = _find(lines, user)
    if adding and index is not None:
        raise ToolError(f"{user} is already in {path} (use 'set' to change the password)")
    if not adding and index is None:
        raise ToolError(f"{user} is not in {path} (use 'add')")
    return index


def _change(path: str, stderr: TextIO, edit: Callable[[List[str]], None], mustExist: bool = True) -> None:
    """
    Change the passwd file C{path} under its lock: read it, let C{edit}
    change its lines in place (or raise L{ToolError}), write it back.
    """
    # Resolved once, so that the file locked is the file read and replaced
    # even if a symbolic link on the way is changed meanwhile.
    target = os.path.realpath(path)
    try:
        with lockFor(target, stderr):
            lines = _readLines(target, mustExist)
            edit(lines)
            writeAtomically(target, "".join(lines).encode("utf-8"))
    except OwnerNotKept as error:
        raise ToolError(f"cannot replace {path}: {error.strerror}")
    except OSError as error:
        raise ToolError(f"cannot change {path}: {error.strerror or error}")


def _setPassword(options: argparse.Namespace, stdin: TextIO, stderr: TextIO, adding: bool) -> str:
    _checkUser(options.user)
    _checkLogin(options.user)
    # A first look, to refuse before asking for a password in vain; the
    # change itself reads the file again under the lock.
    _checkPresence(_readLines(options.file, mustExist=not adding), options.user, options.file, adding)
    password = _askPassword(stdin, stderr)
    try:
        secret = schemes.hashPassword(password, options.scheme)
    except schemes.SchemeError as error:
        raise ToolError(str(error))

    def edit(lines: List[str]) -> None:
        index = _checkPresence(lines, options.user, options.file, adding)
        if index is None:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(_entry(options.user, secret, None))
        else:
            lines[index] = _entry(options.user, secret, lines[index])

    _change(options.file, stderr, edit, mustExist=not adding)
    return f"{'added' if adding else 'changed the password of'} {options.user} ({options.scheme.upper()})"


def _delete(options: argparse.Namespace, stderr: TextIO) -> str:
    _checkUser(options.user)
    if _find(_readLines(options.file, mustExist=True), options.user) is None:
        raise ToolError(f"{options.user} is not in {options.file}")

    def edit(lines: List[str]) -> None:
        index = _find(lines, options.user)
        if index is None:
            raise ToolError(f"{options.user} is not in {options.file}")
        del lines[index]

    _change(options.file, stderr, edit)
    return f"removed {options.user}"


def _list(options: argparse.Namespace, stdout: TextIO) -> None:
    lines = _readLines(options.file, mustExist=True)
    for line in lines:
        user = entryUser(line.rstrip("\r\n"))
        if user is None:
            continue
        secret = line.rstrip("\r\n").split(":", 2)[1]
        try:
            scheme = schemes.checkStored(secret)
        except schemes.SchemeError as error:
            scheme = f"cannot log in: {error}"
        stdout.write(f"{user}\t{scheme}\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m popsrv passwd",
        description="Manage the users of a passwd file (lines user:{SCHEME}secret), as "
        "twistd popsrv --auth passwd-file:FILE reads it. The password is asked for at the "
        "terminal, or read as one line from standard input.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="add|set|del|list")
    for name, helpText in (("add", "add a user"), ("set", "change a user's password")):
        command = commands.add_parser(name, help=helpText)
        command.add_argument(
            "--scheme", default=schemes.DEFAULT_SCHEME,
            help=f"how to store the password: one of {', '.join(sorted(schemes.SCHEMES))} "
            f"[default: {schemes.DEFAULT_SCHEME}]",
        )
        command.add_argument("file", metavar="FILE")
        command.add_argument("user", metavar="USER")
    command = commands.add_parser("del", help="remove a user")
    command.add_argument("file", metavar="FILE")
    command.add_argument("user", metavar="USER")
    command = commands.add_parser("list", help="list the users and their schemes")
    command.add_argument("file", metavar="FILE")
    return parser


def main(
    argv: List[str],
    stdin: Optional[TextIO] = None,
    stdout: Optional[TextIO] = None,
    stderr: Optional[TextIO] = None,
) -> int:
    """
    Run C{passwd} with C{argv} (the arguments after C{passwd}); return the
    exit status.
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    options = _parser().parse_args(argv)
    try:
        if options.command in ("add", "set"):
            if options.scheme.upper() not in schemes.SCHEMES:
                raise ToolError(f"unknown scheme {options.scheme}; known: {', '.join(sorted(schemes.SCHEMES))}")
            message = _setPassword(options, stdin, stderr, adding=options.command == "add")
        elif options.command == "del":
            message = _delete(options, stderr)
        else:
            _list(options, stdout)
            return 0
    except ToolError as error:
        stderr.write(f"popsrv passwd: {error}\n")
        return 1
    stderr.write(f"popsrv passwd: {message}\n")
    return 0
