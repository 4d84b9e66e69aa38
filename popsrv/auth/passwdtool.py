"""
C{python -m popsrv passwd}: add, change, remove and list the users of a
passwd file (see L{popsrv.auth.passwdfile}) without editing it by hand.

The password is asked for twice at the terminal, or read as one line from
standard input when that is not a terminal (for scripts); never from the
command line, where other users could see it.  The file is rewritten
atomically (a temporary file in the same directory, flushed to disk, then
renamed over it) with its mode kept, so a running popsrv reads either the
old version or the new one; comments, blank lines and the other users'
lines are kept as they are.
"""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
import tempfile
from typing import BinaryIO, List, Optional, TextIO, Union

from popsrv.auth import schemes
from popsrv.auth.passwdfile import PasswdFileError, entryUser, parsePasswd

__all__ = ["main", "writeAtomically"]

NEW_FILE_MODE = 0o600


class ToolError(Exception):
    """
    The command cannot be carried out; the message says why.
    """


def writeAtomically(path: str, data: bytes) -> None:
    """
    Replace the file at C{path} with C{data} atomically, keeping its mode
    (and owner, where allowed); a new file gets mode 0600.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        status = os.stat(path)
        mode, owner = stat.S_IMODE(status.st_mode), (status.st_uid, status.st_gid)
    except FileNotFoundError:
        mode, owner = NEW_FILE_MODE, None
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            if owner is not None and owner != (os.getuid(), os.getgid()):
                try:
                    os.fchown(stream.fileno(), *owner)
                except PermissionError:
                    pass
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
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


def _setPassword(options: argparse.Namespace, stdin: TextIO, stderr: TextIO, adding: bool) -> str:
    _checkUser(options.user)
    lines = _readLines(options.file, mustExist=not adding)
    index = _find(lines, options.user)
    if adding and index is not None:
        raise ToolError(f"{options.user} is already in {options.file} (use 'set' to change the password)")
    if not adding and index is None:
        raise ToolError(f"{options.user} is not in {options.file} (use 'add')")
    password = _askPassword(stdin, stderr)
    try:
        secret = schemes.hashPassword(password, options.scheme)
    except schemes.SchemeError as error:
        raise ToolError(str(error))
    if index is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(_entry(options.user, secret, None))
    else:
        lines[index] = _entry(options.user, secret, lines[index])
    writeAtomically(options.file, "".join(lines).encode("utf-8"))
    return f"{'added' if adding else 'changed the password of'} {options.user} ({options.scheme.upper()})"


def _delete(options: argparse.Namespace) -> str:
    _checkUser(options.user)
    lines = _readLines(options.file, mustExist=True)
    index = _find(lines, options.user)
    if index is None:
        raise ToolError(f"{options.user} is not in {options.file}")
    del lines[index]
    writeAtomically(options.file, "".join(lines).encode("utf-8"))
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
            message = _delete(options)
        else:
            _list(options, stdout)
            return 0
    except ToolError as error:
        stderr.write(f"popsrv passwd: {error}\n")
        return 1
    stderr.write(f"popsrv passwd: {message}\n")
    return 0
