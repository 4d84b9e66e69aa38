"""
Every reply popsrv sends, in one place: the response codes of RFC 2449 and
RFC 3206 as an enum, and the wording of each status line.

A client may match a reply's code (C{-ERR [IN-USE] ...}); the text after it
is for people and may change.  Keeping both here makes the wording uniform
and lets a test check every reply's form.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable, Optional

__all__ = ["Code", "count", "err", "multiline", "ok", "printable"]


class Code(Enum):
    """
    The response codes popsrv sends, between brackets after C{-ERR}.
    """

    AUTH = "AUTH"
    """RFC 3206: the credentials were wrong, or this way of logging in is refused."""
    IN_USE = "IN-USE"
    """RFC 2449: the maildrop is locked by another session."""
    LOGIN_DELAY = "LOGIN-DELAY"
    """RFC 2449: the user logged in again sooner than the server allows."""
    SYS_TEMP = "SYS/TEMP"
    """RFC 3206: a temporary failure of the server; try again later."""
    SYS_PERM = "SYS/PERM"
    """RFC 3206: a lasting failure of the server; retrying will not help."""


def ok(text: str = "") -> bytes:
    """
    A positive status line, CRLF included.
    """
    return ("+OK " + text + "\r\n" if text else "+OK\r\n").encode("utf-8")


def err(text: str, code: Optional[Code] = None) -> bytes:
    """
    A negative status line with an optional response code, CRLF included.
    """
    prefix = f"-ERR [{code.value}] " if code is not None else "-ERR "
    return (prefix + text + "\r\n").encode("utf-8")


def multiline(first: str, lines: Iterable[bytes]) -> bytes:
    """
    A whole multi-line reply whose lines need no dot-stuffing.
    """
    body = b"\r\n".join(lines)
    return ok(first) + (body + b"\r\n.\r\n" if body else b".\r\n")


def printable(data: bytes, limit: int = 40) -> str:
    """
    Client-sent bytes as a short, safe text to quote in a reply or a log.
    """
    text = data[:limit].decode("ascii", "replace")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text + ("..." if len(data) > limit else "")


def count(number: int, noun: str) -> str:
    """
    "1 message", "2 messages".
    """
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# Greeting and sign-off.
GREETING = "popsrv ready"
SIGN_OFF = "popsrv signing off"


def signedOff(left: int) -> bytes:
    """
    QUIT's reply once the deletions are applied.
    """
    if left:
        return ok(f"{SIGN_OFF} ({count(left, 'message')} left)")
    return ok(f"{SIGN_OFF} (maildrop empty)")


# Command lines the client got wrong.
def lineTooLongToRead() -> bytes:
    """A line longer than any POP3 allows: the connection closes."""
    return err("line too long, closing connection")


def commandTooLong(limit: int) -> str:
    """A command line over its limit."""
    return f"command line too long (the limit is {limit} octets)"


EMPTY_COMMAND = "empty command"


def unknownCommand(keyword: bytes) -> str:
    """A command popsrv does not know."""
    return f'unknown command "{printable(keyword)}"'


def notBeforeLogin(name: str) -> str:
    """A TRANSACTION command in the AUTHORIZATION state."""
    return f"{name} is not allowed until you log in"


def notAfterLogin(name: str) -> str:
    """An AUTHORIZATION command in the TRANSACTION state."""
    return f"{name} is not allowed after login"


def tooFewArguments(name: str) -> str:
    """Fewer arguments than the command takes (wording of the seed transcripts)."""
    return f"Too few arguments for the {name} command."


def tooManyArguments(name: str) -> str:
    """More arguments than the command takes (``rset 4`` in the seed transcripts)."""
    return f"Too many arguments for the {name} command."


TOO_MANY_CONNECTIONS = err("too many connections", Code.SYS_TEMP)
TOO_MANY_BAD_COMMANDS = "too many bad commands, closing connection"
INTERNAL_ERROR = err("internal server error", Code.SYS_TEMP)


# AUTHORIZATION.
SEND_PASSWORD = "send your password"
USER_BEFORE_PASS = "give USER before PASS"
INVALID_BASE64 = "invalid base64 data"
AUTH_CANCELLED = "authentication cancelled"
CREDENTIALS_REFUSED = err("invalid user name or password", Code.AUTH)
CREDENTIALS_REFUSED_CLOSING = err("invalid user name or password; too many failures, closing connection", Code.AUTH)
AUTH_UNAVAILABLE = err("authentication is unavailable, try again later", Code.SYS_TEMP)
MAILDROP_IN_USE = err("maildrop is locked by another session, try again later", Code.IN_USE)
MAILDROP_UNUSABLE = err("maildrop cannot be used, contact the administrator", Code.SYS_PERM)
MAILDROP_UNAVAILABLE = err("maildrop is unavailable, try again later", Code.SYS_TEMP)


def plaintextRefused(useSTLS: bool) -> str:
    """A password in plaintext where the policy forbids it."""
    advice = "; use STLS first" if useSTLS else ""
    return f"plaintext authentication is not allowed on this connection{advice}"


def unsupportedMechanism(name: bytes) -> str:
    """AUTH with a mechanism this session does not offer."""
    return f'unsupported authentication mechanism "{printable(name)}"'


def loginDelay(seconds: Optional[int]) -> bytes:
    """A login sooner than the login delay allows."""
    return err(f"wait {seconds} seconds between logins", Code.LOGIN_DELAY)


def loggedIn(name: str, messages: int, octets: int) -> bytes:
    """A successful login."""
    return ok(f"{name} has {count(messages, 'message')} ({octets} octets)")


TLS_ACTIVE = "TLS is already active"
STLS_UNAVAILABLE = "STLS is not available on this server"
BEGIN_TLS = "begin TLS negotiation"
UTF8_ENABLED = "UTF8 enabled"


# TRANSACTION.
def invalidNumber(argument: bytes) -> str:
    """A message number that is not a number."""
    return f'invalid message number "{printable(argument)}"'


def noSuchMessage(messages: int) -> str:
    """A message number out of range."""
    return f"no such message, only {messages} messages in maildrop"


def alreadyDeleted(number: int) -> str:
    """A message number marked deleted."""
    return f"message {number} already deleted"


def invalidLineCount(argument: bytes) -> str:
    """TOP's line count that is not a number."""
    return f'invalid number of lines "{printable(argument)}"'


def messageVanished(number: int) -> bytes:
    """A message another program removed during the session."""
    return err(f"message {number} was removed by another program")


def messageUnreadable(number: int) -> bytes:
    """A message the store cannot read now."""
    return err(f"message {number} cannot be read now, try again later", Code.SYS_TEMP)


UPDATE_FAILED = err("could not remove the deleted messages, try again later", Code.SYS_TEMP)
