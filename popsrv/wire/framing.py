"""
POP3 wire framing of stored messages, as one small streaming state machine.

A stored message may use bare LF or CRLF line ends and may lack a final line
end.  On the wire (RFC 1939, section 3) every line ends with CRLF, lines that
start with "." are dot-stuffed, and a multi-line reply ends with ".CRLF".
L{MessageFramer} does that conversion chunk by chunk at C speed
(C{bytes.replace}), carrying its state across chunk boundaries, and also
implements TOP's "headers, blank line, first k body lines" cut.

The rules, which L{normalizedSize} counts without building the output:
    - a line ends at LF; CRLF stays CRLF, a bare LF becomes CRLF;
    - a CR that is not followed by LF is ordinary line content;
    - a message that does not end with LF gets a final CRLF.
"""

from __future__ import annotations

from typing import Iterable, Optional

__all__ = ["MessageFramer", "SizeCounter", "normalizedSize", "TERMINATOR"]

TERMINATOR = b".\r\n"


# Data with fewer than one "." per this many octets is dot-stuffed by
# looking at each "." (see _stuffFew), other data by bytes.replace.
FEW_DOTS = 512


def _stuffFew(data: bytes, dots: int) -> bytes:
    """
    Double each "." that follows a LF in C{data}, which holds C{dots} of
    them (the one at its start, if any, is the caller's).
    """
    if not dots:
        return data
    pieces = []
    start = 0
    found = data.find(b".", 1)
    while found >= 0:
        if data[found - 1] == 0x0A:
            pieces.append(data[start:found])
            start = found
            pieces.append(b".")
        found = data.find(b".", found + 1)
    if not pieces:
        return data
    pieces.append(data[start:])
    return b"".join(pieces)


class MessageFramer:
    """
    Convert a stored message, fed in arbitrary chunks, to its POP3 wire form.

    Feed every chunk to L{feed} and send what it returns; when the message
    ends (or L{done} becomes true) send what L{finish} returns, which
    includes the terminating ".CRLF".

    @ivar done: True once a TOP line limit has been reached: the rest of the
        message is not needed and its producer may be stopped.
    """

    def __init__(self, bodyLines: Optional[int] = None) -> None:
        """
        @param bodyLines: C{None} to frame the whole message (RETR), or the
            number of body lines to send after the headers (TOP).
        """
        self.done = False
        self._atLineStart = True
        self._pendingCR = False
        self._linesLeft = bodyLines
        self._inBody = False

    def feed(self, data: bytes) -> bytes:
        """
        Frame the next chunk of the stored message and return the octets to
        send for it (possibly fewer, when a CR is held back to see whether an
        LF follows it in the next chunk).
        """
        if self.done:
            return b""
        if self._pendingCR:
            data = b"\r" + data
            self._pendingCR = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._pendingCR = True
        if not data:
            return b""
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        data = data.replace(b"\n", b"\r\n")
        if self._linesLeft is not None:
            data = self._limit(data)
        return self._stuff(data)

    def finish(self) -> bytes:
        """
        Return the octets that end the reply: a held-back CR, a CRLF if the
        last line was unterminated, and the terminating ".CRLF".
        """
        out = b""
        if not self.done:
            if self._pendingCR:
                out = self._stuff(b"\r")
                self._pendingCR = False
            if not self._atLineStart:
                out += b"\r\n"
        self._atLineStart = True
        return out + TERMINATOR

    def _stuff(self, data: bytes) -> bytes:
        """
        Dot-stuff normalized data: double a "." that starts a line.
        """
        if not data:
            return data
        if self._atLineStart and data[:1] == b".":
            data = b"." + data
        dots = data.count(b".")
        if dots * FEW_DOTS < len(data):
            # Few dots, if any (an attachment in base64 has none): look at
            # each, found at memchr's speed, rather than search for "\n.",
            # which CPython does at about a GB/s.
            data = _stuffFew(data, dots)
        else:
            data = data.replace(b"\n.", b"\n..")
        self._atLineStart = data[-1:] == b"\n"
        return data

    def _limit(self, data: bytes) -> bytes:
        """
        Cut normalized data for TOP: pass the headers and the blank line after
        them, then only as many body lines as are left.
        """
        if self._inBody:
            return self._takeBodyLines(data)
        if self._atLineStart and data.startswith(b"\r\n"):
            end = 2
        else:
            found = data.find(b"\n\r\n")
            if found < 0:
                return data
            end = found + 3
        self._inBody = True
        return data[:end] + self._takeBodyLines(data[end:])

    def _takeBodyLines(self, data: bytes) -> bytes:
        """
        Return the part of body data within the line limit, and set L{done}
        when the limit is reached.
        """
        left = self._linesLeft
        assert left is not None
        if left == 0:
            self.done = True
            return b""
        count = data.count(b"\n")
        if count < left:
            self._linesLeft = left - count
            return data
        end = 0
        for _ in range(left):
            end = data.index(b"\n", end) + 1
        self._linesLeft = 0
        self.done = True
        return data[:end]


class SizeCounter:
    """
    Count, chunk by chunk, the octets L{MessageFramer} sends for a whole
    message before dot-stuffing (what L{normalizedSize} counts at once).

    @ivar counted: the octets counted so far, without the CRLF that
        L{total} adds after an unterminated last line.
    """

    __slots__ = ("counted", "_lastByte")

    def __init__(self) -> None:
        self.counted = 0
        self._lastByte = b""

    def feed(self, chunk: bytes) -> None:
        """
        Count the next chunk of the stored message.
        """
        if not chunk:
            return
        bareLFs = chunk.count(b"\n") - chunk.count(b"\r\n")
        if self._lastByte == b"\r" and chunk[:1] == b"\n":
            bareLFs -= 1
        self.counted += len(chunk) + bareLFs
        self._lastByte = chunk[-1:]

    def total(self) -> int:
        """
        The size of the message fed so far, as if it ended here.
        """
        if self.counted and self._lastByte != b"\n":
            return self.counted + 2
        return self.counted


def normalizedSize(chunks: Iterable[bytes]) -> int:
    """
    Return the number of octets L{MessageFramer} sends for a whole message
    before dot-stuffing, given the stored message as chunks: the size POP3
    reports in STAT and LIST.
    """
    counter = SizeCounter()
    for chunk in chunks:
        counter.feed(chunk)
    return counter.total()
