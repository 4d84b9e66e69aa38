"""
What a L{popsrv.pop3.session.Session} asks its connection to do: each
command line gives one effect, which the Twisted glue carries out.
"""

from __future__ import annotations

from typing import FrozenSet, Iterator, Optional, Union

import attr

from popsrv.auth import sasl
from popsrv.messages import MessageInfo

__all__ = ["Authenticate", "Effect", "LogIn", "Reply", "SendListing", "StartTLS", "Stream", "Update"]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Reply:
    """
    Send C{data}; then, if C{close} is set, close the connection for that
    reason.
    """

    data: bytes
    close: Optional[str] = None


@attr.s(frozen=True, slots=True, auto_attribs=True)
class LogIn:
    """
    Log in with C{credentials} through the portal (USER/PASS or APOP).

    @ivar user: the login name as sent, for logs.
    @ivar malformed: the credentials cannot be right (a NUL, invalid UTF-8):
        fail without asking the portal.
    @ivar method: how the client logs in, for logs.
    """

    credentials: object
    user: bytes
    malformed: bool
    method: str


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Authenticate:
    """
    Run a SASL exchange (AUTH) with C{mechanism}, starting from the client's
    initial response if it sent one.
    """

    mechanism: sasl.Mechanism
    response: Optional[bytes]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class StartTLS:
    """
    Send C{data} (STLS's C{+OK}), discard what the client sent after the
    command, and start TLS.
    """

    data: bytes


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Stream:
    """
    Send message C{number}: C{status}, then the message framed for the wire,
    whole (RETR: C{bodyLines} is C{None}) or its headers and first
    C{bodyLines} body lines (TOP).  Report a whole message sent with
    L{Transaction.retrieved <popsrv.pop3.transaction.Transaction.retrieved>}.
    """

    number: int
    message: MessageInfo
    status: bytes
    bodyLines: Optional[int]


@attr.s(frozen=True, slots=True, auto_attribs=True)
class SendListing:
    """
    Send a multi-line reply of C{count} lines that need no dot-stuffing
    (LIST or UIDL of the whole maildrop): C{status}, the lines, the
    terminator.  The lines are made as they are consumed.
    """

    status: str
    lines: Iterator[bytes]
    count: int


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Update:
    """
    QUIT after login: apply the deletions and seen marks (by uid), then
    report with L{Session.updated}.
    """

    deleted: FrozenSet[str]
    seen: FrozenSet[str]


Effect = Union[Reply, LogIn, Authenticate, StartTLS, Stream, SendListing, Update]
