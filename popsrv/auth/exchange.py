"""
What every SASL mechanism's exchange shares: the L{Exchange} base class
that checks the order of steps, the L{Challenge} it sends, and
L{SASLError}, the one error bad client data raises.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import attr
from twisted.internet import defer

__all__ = ["Challenge", "Exchange", "Lookup", "SASLError", "Step", "checkedText"]

# A lookup: (user name, mechanism name) -> ScramParameters or None, or a
# Deferred of that.
Lookup = Callable[[bytes, str], Any]
# What a step gives: a challenge, credentials, or a Deferred of either.
Step = Union["Challenge", Any, defer.Deferred[Any]]



class SASLError(Exception):
    """
    The client's SASL data is malformed or unacceptable (e.g. a PLAIN authzid
    that differs from the authcid, a SCRAM message that does not parse, a
    missing part).  The protocol answers it like a failed login (C{-ERR
    [AUTH]}), so the message is for the operator's log only.
    """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Challenge:
    """
    A server challenge: the protocol sends C{"+ " + base64(data)}.
    """

    data: bytes


def checkedText(data: bytes, what: str) -> bytes:
    """
    Return C{data} if it is a non-empty UTF-8 string without NUL; raise
    L{SASLError} naming C{what} otherwise.
    """
    if not data:
        raise SASLError(f"the {what} is empty")
    if b"\0" in data:
        raise SASLError(f"the {what} contains NUL")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError(f"the {what} is not UTF-8")
    return data


class Exchange:
    """
    One authentication with one mechanism: one AUTH command.

    Subclasses implement C{_step}; this class checks the order of calls.

    @ivar user: the login name the client has given so far (for logs, as
        sent: it may be anything), or C{b""}.
    """

    user = b""
    _started = False
    _finished = False

    def step(self, response: Optional[bytes]) -> Step:
        """
        Advance with the client's decoded response: C{None} when AUTH had no
        initial response, C{b""} for an empty one.

        @return: a L{Challenge} to send, or, when the exchange is complete,
            the twisted.cred credentials to log in with; or a C{Deferred} of
            either when the step must look something up first (a SCRAM
            exchange given a lookup), which fails with L{SASLError} or with
            the lookup's own error.
        @raise SASLError: the client's data is malformed, or the exchange is
            already complete.
        """
        if self._finished:
            raise SASLError("the exchange is already complete")
        if response is None and self._started:
            raise SASLError("a response is missing")
        self._started = True
        try:
            result = self._step(response)
        except SASLError:
            self._finished = True
            raise
        if isinstance(result, defer.Deferred):
            # Waiting for a lookup: no other step may start meanwhile.
            self._finished = True
            return result.addCallback(self._resumed)
        if not isinstance(result, Challenge):
            self._finished = True
        return result

    def _resumed(self, result: Any) -> Any:
        if isinstance(result, Challenge):
            self._finished = False
        return result

    def _step(self, response: Optional[bytes]) -> Step:
        """
        Handle one response; see L{step}.
        """
        raise NotImplementedError()

    def successData(self) -> Optional[bytes]:
        """
        Data the server must still send before its C{+OK}, once a checker
        has accepted the credentials, or C{None}.
        """
        return None
