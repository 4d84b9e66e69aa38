"""
A passwd file as an L{ISecretSource}: one user a line, in the format of
Dovecot's passwd-file, so that an operator can bring a Dovecot file over::

    # comments and blank lines are ignored
    alice:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$...
    bob:{SHA512-CRYPT}$6$...::::::      (further fields are ignored)
    carol:{PLAIN}hunter2

The file is read when popsrv starts, and again at the first lookup after it
changed (its size, modification time or inode, checked with one C{stat} per
lookup): editing it, or replacing it with a rename, takes effect without a
restart.  A version with a syntax error is not used: the previous one stays
in force and the error is logged with its line number.  A line whose secret
has an unknown scheme or does not parse is not an error: that user cannot
log in, and one log line at each load names the line.
"""

from __future__ import annotations

import os
from typing import Dict, FrozenSet, List, Optional, Tuple

import attr
from twisted.logger import Logger
from zope.interface import implementer

from popsrv.auth import schemes
from popsrv.errors import CredentialsUnavailable
from popsrv.interfaces import IKnownSchemes, ISecretSource

__all__ = ["PasswdFile", "PasswdFileError", "PasswdSyntaxError", "Problem", "lintPasswd", "parsePasswd"]

# What identifies a version of the file: device, inode, size, modification time.
_Signature = Tuple[int, int, int, int]

log = Logger()


class PasswdFileError(ValueError):
    """
    A passwd file cannot be used: it cannot be read, or has a syntax error.
    """


class PasswdSyntaxError(PasswdFileError):
    """
    A line of a passwd file does not follow the format.

    @ivar lineNumber: the line's number, from 1.
    @ivar reason: what is wrong with it.
    @ivar path: the file's path, if known.
    """

    def __init__(self, lineNumber: int, reason: str, path: Optional[str] = None) -> None:
        where = f"{path} line {lineNumber}" if path is not None else f"line {lineNumber}"
        super().__init__(f"{where}: {reason}")
        self.lineNumber = lineNumber
        self.reason = reason
        self.path = path


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Problem:
    """
    A user who cannot log in because of the secret on their line.
    """

    lineNumber: int
    user: str
    reason: str


def entryUser(line: str) -> Optional[str]:
    """
    The user name of a passwd line, or C{None} for a blank line or a
    comment.
    """
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    return line.split(":", 1)[0]


def _parseLine(number: int, raw: bytes, firstLines: Dict[str, int]) -> Optional[Tuple[str, str]]:
    """
    The user and stored secret of line C{number} (C{raw}, without its
    LF), or C{None} for a blank line or a comment; C{firstLines} holds
    the line of each user seen before, and gets this one's.

    @raise PasswdSyntaxError: for a line that is not UTF-8, has no C{:},
        has an empty user name, or names a user already named.
    """
    try:
        line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise PasswdSyntaxError(number, "the line is not UTF-8")
    user = entryUser(line)
    if user is None:
        return None
    if ":" not in line:
        raise PasswdSyntaxError(number, "a line is user:{SCHEME}secret, but there is no ':'")
    if not user or user != user.strip():
        raise PasswdSyntaxError(number, "the user name is empty or starts or ends with a space")
    if user in firstLines:
        raise PasswdSyntaxError(number, f"user {user!r} is already on line {firstLines[user]}")
    firstLines[user] = number
    return user, line.split(":", 2)[1]


def _unusable(number: int, user: str, secret: str) -> Optional[Problem]:
    """
    Why the secret on a line cannot be used, or C{None} if it can.
    """
    try:
        schemes.checkStored(secret)
    except schemes.SchemeError as error:
        return Problem(number, user, str(error))
    return None


def parsePasswd(data: bytes) -> Tuple[Dict[str, str], List[Problem]]:
    """
    Parse a passwd file: return its secrets (user name to stored secret)
    and the users whose secrets cannot be used.

    @raise PasswdSyntaxError: for the first line that is not UTF-8, has
        no C{:}, has an empty user name, or names a user already named.
    """
    secrets: Dict[str, str] = {}
    firstLines: Dict[str, int] = {}
    problems: List[Problem] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        entry = _parseLine(number, raw, firstLines)
        if entry is None:
            continue
        user, secret = entry
        secrets[user] = secret
        problem = _unusable(number, user, secret)
        if problem is not None:
            problems.append(problem)
    return secrets, problems


def _schemeOf(secret: str) -> Optional[str]:
    """The scheme of a stored secret, or C{None} if it has none."""
    try:
        return schemes.parse(secret)[0]
    except schemes.SchemeError:
        return None


def lintPasswd(data: bytes) -> Tuple[List[PasswdSyntaxError], List[Problem]]:
    """
    Every fault of a passwd file, where L{parsePasswd} stops at the first
    syntax error: the lines with a syntax error (which keep the file from
    being used), and the users whose secrets cannot be used (who cannot
    log in), each in file order.
    """
    errors: List[PasswdSyntaxError] = []
    problems: List[Problem] = []
    firstLines: Dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            entry = _parseLine(number, raw, firstLines)
        except PasswdSyntaxError as error:
            errors.append(error)
            continue
        if entry is not None:
            problem = _unusable(number, *entry)
            if problem is not None:
                problems.append(problem)
    return errors, problems


@implementer(ISecretSource, IKnownSchemes)
class PasswdFile:
    """
    The secrets of a passwd file, re-read whenever the file changes.

    @ivar path: the file's path.
    @raise PasswdFileError: (from the constructor) if the file cannot be
        read or has a syntax error when popsrv starts.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._secrets: Dict[str, str] = {}
        self._schemes: FrozenSet[str] = frozenset()
        self._signature: Optional[Tuple[object, ...]] = None
        # Why the file cannot be read now, if it cannot.
        self._unreadable: Optional[str] = None
        try:
            self._load(self._stat())
        except OSError as error:
            raise PasswdFileError(f"cannot read {path}: {error.strerror or error}")

    def _stat(self) -> _Signature:
        status = os.stat(self.path)
        return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    def _load(self, signature: _Signature) -> None:
        """
        Read and parse the file; use it only if it parses.
        """
        with open(self.path, "rb") as stream:
            data = stream.read()
        self._signature = signature
        try:
            secrets, problems = parsePasswd(data)
        except PasswdSyntaxError as error:
            raise PasswdSyntaxError(error.lineNumber, error.reason, self.path) from None
        for problem in problems:
            log.warn(
                "{path} line {line}: user {user!r} cannot log in: {reason}",
                path=self.path, line=problem.lineNumber, user=problem.user, reason=problem.reason,
                event="passwd-unusable-secret",
            )
        self._secrets = secrets
        self._schemes = frozenset(filter(None, map(_schemeOf, secrets.values())))
        self._unreadable = None
        log.info("{path}: {count} users", path=self.path, count=len(secrets), event="passwd-loaded")

    def _refresh(self) -> None:
        """
        Re-read the file if it changed since it was last read.  A version
        with a syntax error leaves the version in force; a file that cannot
        be read (gone, or not readable after twistd dropped privileges)
        makes logins fail as unavailable until it can be, since the version
        read before may hold users since removed.  Each is logged once per
        change.
        """
        try:
            signature = self._stat()
        except OSError as error:
            self._cannotRead(("unreadable", error.errno), error)
            return
        if signature == self._signature and self._unreadable is None:
            return
        try:
            self._load(signature)
        except PasswdSyntaxError as error:
            log.error(
                "{error}; the version read before stays in force", error=str(error), line=error.lineNumber,
                event="passwd-syntax-error",
            )
        except OSError as error:
            self._cannotRead(signature, error)

    def _cannotRead(self, signature: Tuple[object, ...], error: OSError) -> None:
        """
        The file changed and cannot be read: refuse logins until it can.
        """
        if signature == self._signature:
            return
        self._signature = signature
        self._unreadable = f"cannot read {self.path}: {error.strerror or error}"
        log.error(
            "{why}; logins fail as unavailable until it can be read", why=self._unreadable,
            event="passwd-unreadable",
        )

    def secretFor(self, username: bytes) -> Optional[str]:
        """
        The stored secret of C{username}, or C{None}; see L{ISecretSource}.

        @raise CredentialsUnavailable: if the file cannot be read now.
        """
        self._refresh()
        if self._unreadable is not None:
            raise CredentialsUnavailable(self._unreadable)
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return self._secrets.get(name)

    def storedSchemes(self) -> FrozenSet[str]:
        """
        The schemes of the secrets in force, the file read again if it
        changed (a stat, as at each login); see L{IKnownSchemes}.
        """
        self._refresh()
        return self._schemes

    def users(self) -> List[str]:
        """
        The user names in the version in force, in file order.
        """
        self._refresh()
        return list(self._secrets)
