"""
mboxrd unquoting, as one small streaming state machine.

A delivery agent writing a message into an mbox spool puts a C{>} before
every line of the message that starts with C{From } (or with C{>}s then
C{From }), so that no line of a message can pass for the separator line of
the next one.  Reading it back, a line matching C{^>+From } loses one
C{>}: the mboxrd convention, which reads spools written the older mboxo
way (C{From } quoted, C{>From } left alone) right but for lines that were
C{>From } in the message itself.

L{Unquoter} does this chunk by chunk at C speed (one regular expression
substitution per chunk), holding back at most a few octets where a chunk
ends in the middle of what may still become a quoted C{From } line; the
size of what it gives is what RETR sends, so the store's sizes and its
messages come from the same code.
"""

from __future__ import annotations

import re

__all__ = ["Unquoter", "unquote"]

# A quoted From line after a line end in the data (a leading literal lets
# the regular expression engine skip to the candidates), and one at the
# data's start.
_QUOTED = re.compile(rb"\n>(>*From )")
_QUOTED_START = re.compile(rb">(>*From )")
# What a line's start may be while it can still become a quoted From line:
# one or more >, then a proper prefix of "From ".
_UNDECIDED = re.compile(rb">+(?:F|Fr|Fro|From)?")


class Unquoter:
    """
    Undo mboxrd quoting in one message's content, fed in chunks of any
    size: each chunk's result, then L{finish}'s, make up the message.
    """

    __slots__ = ("_pending", "_atLineStart")

    def __init__(self) -> None:
        # Octets held back: one > and a prefix of "From", at a line start.
        self._pending = b""
        self._atLineStart = True

    def feed(self, data: bytes) -> bytes:
        """
        Unquote the next chunk; return what can be given now.
        """
        if not data:
            return b""
        if self._pending:
            data = self._pending + data
            self._pending = b""
        if self._atLineStart and data[:1] == b">" and _QUOTED_START.match(data):
            data = data[1:]
        out = _QUOTED.sub(rb"\n\1", data) if b"\n>" in data else data
        lastEnd = out.rfind(b"\n")
        if lastEnd < 0 and not self._atLineStart:
            # No line starts in this chunk.
            return out
        tailStart = lastEnd + 1
        self._atLineStart = True
        if tailStart == len(out):
            return out
        tail = out[tailStart:]
        if _UNDECIDED.fullmatch(tail) is None:
            # The last line's start is decided (quoted lines were unquoted).
            self._atLineStart = False
            return out
        # Keep one > and the letters: the other >s go out now, as the
        # line has as many whatever comes next.
        letters = len(tail.lstrip(b">"))
        keep = 1 + letters
        self._pending = tail[-keep:]
        return out[: len(out) - keep]

    def finish(self) -> bytes:
        """
        Return what is still held back, at the end of the message (a last
        line that stopped before its C{From } was complete is not quoted).
        """
        pending, self._pending = self._pending, b""
        self._atLineStart = True
        return pending


def unquote(content: bytes) -> bytes:
    """
    Undo mboxrd quoting in a whole message.
    """
    unquoter = Unquoter()
    return unquoter.feed(content) + unquoter.finish()
