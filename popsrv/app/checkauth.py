"""
What C{python -m popsrv check} examines of the C{--auth} checkers it does
not make (C{file:}, C{passwd-file:}, C{pgsql:}): their files, the lines of
a passwd file, the PostgreSQL connection and query; and whether a file
popsrv reads later can be read by the identity it serves as.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from popsrv.app.access import Identity, readableBy, readableFileProblem
from popsrv.auth.passwdfile import lintPasswd
from popsrv.errors import CredentialsUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from popsrv.app.check import CheckOptions, Report

__all__ = ["EXAMINED", "checkAuth", "readLater"]

# The --auth checkers whose files this command examines itself rather than
# making the checker (which, for pgsql:, would open a pool of connections).
EXAMINED = ("file", "passwd-file", "pgsql")


def readLater(label: str, path: str, identity: Identity, options: CheckOptions, report: Report, later: str) -> None:
    """
    Report a file that C{identity} cannot read: a problem with --workers
    (which read it after twistd takes that identity), else a warning
    saying what will fail C{later}, or nothing if C{later} is empty.
    """
    problem = readableBy(path, identity)
    if problem is None:
        return
    if options["workers"] > 1:
        report.problem(f"{label}: {problem}, and --workers processes read it as that user")
    elif later:
        report.warning(f"{label}: {problem}: {later}")


def _checkFile(label: str, path: str, identity: Identity, options: CheckOptions, report: Report) -> None:
    """
    A C{file:} checker reads its file at every login, after twistd took
    the identity popsrv serves as.
    """
    problem = readableBy(path, identity)
    if problem is not None:
        report.problem(f"{label}: {problem}, and the file: checker reads it at every login")


def _checkPasswdFile(label: str, path: str, identity: Identity, options: CheckOptions, report: Report) -> None:
    """
    Every faulty line of a passwd file: syntax errors (the file would not
    be used) are problems, users who cannot log in are warnings.
    """
    with open(path, "rb") as stream:
        data = stream.read()
    errors, unusable = lintPasswd(data)
    for error in errors:
        report.problem(f"{label}: line {error.lineNumber}: {error.reason}")
    for entry in unusable:
        report.warning(f"{label}: line {entry.lineNumber}: user {entry.user!r} cannot log in: {entry.reason}")
    readLater(label, path, identity, options, report, "once it changes, logins fail until it can be read")


def _checkPostgres(label: str, path: str, identity: Identity, options: CheckOptions, report: Report) -> None:
    """
    Read the settings, connect and run the query once.
    """
    try:
        from popsrv.auth import pgsql
    except ImportError as error:
        if not (error.name or "").startswith("psycopg"):
            raise
        report.problem(f"{label}: pgsql needs psycopg: pip install 'popsrv[pgsql]'")
        return
    try:
        settings = pgsql.readSettings(path)
    except pgsql.SettingsError as error:
        report.problem(f"--auth pgsql: {error}")
        return
    try:
        pgsql.probe(settings)
    except CredentialsUnavailable as error:
        report.problem(f"{label}: {error}")
    readLater(label, path, identity, options, report, "")


_EXAMINE = {"file": _checkFile, "passwd-file": _checkPasswdFile, "pgsql": _checkPostgres}


def checkAuth(options: CheckOptions, identity: Identity, report: Report) -> None:
    """
    Examine the file of every C{file:}, C{passwd-file:} and C{pgsql:}
    checker (the others were made, and so checked, with the options).
    """
    for description in options.authDescriptions:
        kind, _, path = description.partition(":")
        if kind not in EXAMINED:
            continue
        if not path.strip():
            report.problem(f"--auth {kind} needs the path of a file: --auth {kind}:PATH")
            continue
        label = f"--auth {kind}:{path}"
        problem = readableFileProblem(path)
        if problem is not None:
            report.problem(f"{label}: {problem}")
            continue
        _EXAMINE[kind](label, path, identity, options, report)
