"""
The values of single options of C{twistd popsrv}, each parsed and checked
on its own, with a usage error that names the option (see
L{popsrv.app.options} for the command line as a whole).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import endpoints
from twisted.python import usage

from popsrv.app.listening import splitTLS, tcpArgument

__all__ = [
    "MAX_BACKLOG", "PATH_CHECKERS", "checkEndpoint", "checkerName", "daysOrNever", "nonNegative", "wholeNumber",
    "withByteNames",
]

# The largest listen backlog a socket takes (the kernel caps it further,
# at net.core.somaxconn).
MAX_BACKLOG = 2**31 - 1

# Checkers whose argument is a file name, which a message may repeat; other
# arguments may hold passwords (memory:alice:secret).
PATH_CHECKERS = ("file", "passwd-file", "pgsql")


def withByteNames(checker: Any) -> Any:
    """
    Make Twisted's C{memory:} checker compare names and passwords as bytes,
    like every other checker (strcred builds it with text).
    """
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (v.encode("utf-8") if isinstance(v, str) else v)
            for k, v in checker.users.items()
        }
    return checker


class _NoReactor:
    """
    Stands in for a reactor where C{--listen} descriptions are checked: an
    endpoint only keeps its reactor until it listens, which it never does
    here.
    """


def checkerName(description: str) -> str:
    """
    An --auth description as a message may show it: the checker type, with
    its argument only if that is a file name (C{memory:...} for
    C{memory:alice:secret}).
    """
    kind, colon, argument = description.partition(":")
    if not colon or kind in PATH_CHECKERS:
        return description
    return f"{kind}:..."


def wholeNumber(option: str) -> Callable[[str], int]:
    """
    The coercer of an option that takes a whole number: its error names
    the option (Twisted prefixes it with "Parameter type enforcement
    failed").
    """

    def coerce(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{option} takes a whole number, not {value!r}") from None

    coerce.coerceDoc = "A whole number."  # type: ignore[attr-defined]
    return coerce


def checkEndpoint(option: str, description: str) -> None:
    """
    Check the endpoint description given to C{option}, or raise a usage
    error that says what is wrong with it.
    """
    inner, _ = splitTLS(description)
    try:
        endpoints.serverFromString(_NoReactor(), inner)
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise usage.UsageError(f"{option} {description!r} is not a usable endpoint: {reason}")
    field = tcpArgument(inner, "port")
    port = int(field) if field is not None and field.isdigit() else 0
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"{option} {description!r}: port {port} is not between 0 and 65535")
    # Twisted has checked that it is a number; the socket's listen()
    # takes a C int, and a larger one would end the start in a traceback.
    backlog = tcpArgument(inner, "backlog")
    if backlog is not None and not 0 <= int(backlog) <= MAX_BACKLOG:
        raise usage.UsageError(f"{option} {description!r}: backlog {backlog} is not between 0 and {MAX_BACKLOG}")


def nonNegative(option: str, value: str) -> int:
    """
    Parse a whole number of at least 0, or raise a usage error.
    """
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise usage.UsageError(f"{option} takes a whole number of at least 0, not {value!r}")
    return number


def daysOrNever(value: str) -> Optional[int]:
    """
    Parse --expire: C{None} for NEVER, or a number of days.
    """
    if value.upper() == "NEVER":
        return None
    return nonNegative("--expire", value)


