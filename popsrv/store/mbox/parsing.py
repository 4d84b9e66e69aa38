"""
Splitting an mbox spool into messages, and reading one message.

The rules (classic Unix mbox, read as mboxrd):
    - a message starts with a separator line, C{From } at the start of the
      spool or after a blank line (an empty line, LF or CRLF); C{From }
      after any other line is message content;
    - the separator line is not part of the message, and neither is the
      blank line before the next separator (nor the one at the very end of
      the spool, which delivery agents write after every message);
    - C{Content-Length:} is never trusted: only separators end messages;
    - a line matching C{^>+From } loses one C{>} (see L{unquoting});
    - what comes before the first separator is not a message: the scan
      reports its length, and the store leaves it where it is;
    - a scan stops after L{MAX_MESSAGES} messages: what follows is left
      where it is, for a later session.

The spool is read in large chunks with C{pread}, whatever its lines (a
line of many megabytes costs no more than many short ones), and every
message is measured (the octets RETR sends before dot-stuffing) and
hashed on the way: its digest covers the separator line, the header block
without the headers mail programs rewrite (see L{headers}) and the body,
so it identifies the message's content whatever its place in the spool.
"""

from __future__ import annotations

import array
import hashlib
import os
import re
from typing import Callable, List, NamedTuple, Optional

from popsrv.store.mbox.headers import HEADER_LIMIT, isRead, stableHeaders, uidCandidate
from popsrv.store.mbox.unquoting import Unquoter
from popsrv.wire.framing import SizeCounter

__all__ = ["MAX_MESSAGES", "READ_SIZE", "MessageFacts", "MessageReader", "SpoolScan", "readMessage", "scanSpool"]

READ_SIZE = 1024 * 1024
# How many messages a scan reads at most.  Each costs some 330 octets and
# 7 microseconds in a session however small it is: 8 MB of spool in
# messages of 8 octets (one million) took 330 MB and 6.7 s to list.
MAX_MESSAGES = 250_000
# A separator line after a blank line: the line end that ends the line
# before, the blank line (LF or CRLF), "From ".
_SEPARATOR = re.compile(rb"\n\r?\nFrom ")
# How far before a chunk's end a separator may begin without being seen
# whole: it is read again with the next chunk.
_OVERLAP = len(b"\n\r\nFrom")
# Before the spool, as if it were there: a separator at the spool's start
# (or after a blank line at its start) is found like any other.
_BEFORE_SPOOL = b"\n\n"


class MessageFacts(NamedTuple):
    """
    What reading one message found.

    @ivar size: the octets RETR sends for it before dot-stuffing.
    @ivar digest: the digest of its content, without its volatile headers.
    @ivar candidate: its valid C{X-UIDL:} value, if it has exactly one.
    @ivar read: whether its C{Status:} marks it read.
    """

    size: int
    digest: bytes
    candidate: Optional[str]
    read: bool


def _nothing(data: bytes = b"") -> None:
    """Do nothing (what a reader does with the unquoted content by default)."""


class MessageReader:
    """
    Read one message's separator line and content, fed in order and in
    chunks of any size: measure it, hash it, find its C{X-UIDL:} and
    C{Status:}, and give its unquoted content to C{keep}.
    """

    def __init__(self, keep: Callable[[bytes], None] = _nothing) -> None:
        self._keep = keep
        self._digest = hashlib.blake2b(digest_size=16, person=b"popsrv-mbox")
        self._unquoter = Unquoter()
        self._size = SizeCounter()
        self._header: Optional[bytearray] = bytearray()
        self._searched = 0
        self._candidate: Optional[str] = None
        self._read = False

    def separator(self, data: bytes) -> None:
        """
        Take (part of) the separator line, with its line end.
        """
        self._digest.update(data)

    def feed(self, data: bytes) -> None:
        """
        Take the next chunk of the message's content.
        """
        if not data:
            return
        out = self._unquoter.feed(data)
        self._size.feed(out)
        self._keep(out)
        if self._header is None:
            self._digest.update(data)
            return
        self._header += data
        end = self._headerEnd()
        if end is None and len(self._header) >= HEADER_LIMIT:
            end = HEADER_LIMIT
        if end is not None:
            self._endHeader(min(end, HEADER_LIMIT))

    def _headerEnd(self) -> Optional[int]:
        """
        Where the header block ends (after its blank line), if it does in
        what was fed so far.
        """
        header = self._header
        assert header is not None
        if header[:1] == b"\n":
            return 1
        if header[:2] == b"\r\n":
            return 2
        start = max(0, self._searched - 2)
        self._searched = len(header)
        ends = [found + length for found, length in ((header.find(b"\n\n", start), 2),
                                                     (header.find(b"\n\r\n", start), 3)) if found >= 0]
        return min(ends) if ends else None

    def _endHeader(self, end: int) -> None:
        """
        Take the first C{end} octets fed as the header block, the rest as
        body.
        """
        header = self._header
        assert header is not None
        self._header = None
        block = bytes(header[:end])
        self._candidate = uidCandidate(block)
        self._read = isRead(block)
        self._digest.update(stableHeaders(block))
        self._digest.update(header[end:])

    def finish(self) -> MessageFacts:
        """
        The message has ended: give what is held back, and return the facts.
        """
        out = self._unquoter.finish()
        self._size.feed(out)
        self._keep(out)
        if self._header is not None:
            self._endHeader(len(self._header))
        return MessageFacts(self._size.total(), self._digest.digest(), self._candidate, self._read)


class SpoolScan:
    """
    The messages of a spool as one scan found them, by column (a few
    objects for the garbage collector, however many messages).

    @ivar starts: where each message's separator line starts.
    @ivar contentStarts: where each message's content starts (after its
        separator line).
    @ivar ends: where each message's content ends (before the blank line
        that ends it, if any).
    @ivar sizes: each message's size as RETR sends it.
    @ivar digests: each message's content digest.
    @ivar candidates: each message's valid C{X-UIDL:} value, or C{None}.
    @ivar read: whether each message's C{Status:} marks it read (0 or 1).
    @ivar length: the spool's size, as scanned (or, if the scan stopped
        at its limit, where the first message it did not read starts).
    @ivar junk: how many octets came before the first message.
    @ivar junkIsBlank: whether those were only line ends.
    @ivar more: whether the scan stopped at its limit, before messages
        it did not read.
    """

    def __init__(self) -> None:
        self.starts = array.array("q")
        self.contentStarts = array.array("q")
        self.ends = array.array("q")
        self.sizes = array.array("q")
        self.digests: List[bytes] = []
        self.candidates: List[Optional[str]] = []
        self.read = bytearray()
        self.length = 0
        self.junk = 0
        self.junkIsBlank = True
        self.more = False

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, contentStart: int, end: int, facts: MessageFacts) -> None:
        """
        Add a message.
        """
        self.starts.append(start)
        self.contentStarts.append(contentStart)
        self.ends.append(end)
        self.sizes.append(facts.size)
        self.digests.append(facts.digest)
        self.candidates.append(facts.candidate)
        self.read.append(facts.read)

    def nextStart(self, index: int) -> int:
        """
        Where what follows message C{index} starts: the next message, or
        the end of the spool.
        """
        return self.starts[index + 1] if index + 1 < len(self.starts) else self.length


class _Scanner:
    """
    The state of one scan: where it is (before the first message, in a
    separator line, in a message's content) and the message being read.
    """

    def __init__(self, start: int) -> None:
        self.scan = SpoolScan()
        self.cursor = start
        self.reader: Optional[MessageReader] = None
        self.inSeparator = False
        self.start = 0
        self.contentStart = 0

    def advance(self, buffer: bytes, base: int, until: int) -> None:
        """
        Take what the buffer holds from the cursor up to C{until}
        (absolute offsets; the buffer starts at C{base}).
        """
        if until <= self.cursor:
            return
        data = buffer[self.cursor - base:until - base]
        self.cursor = until
        reader = self.reader
        if reader is None:
            self.scan.junk += len(data)
            if data.strip(b"\r\n"):
                self.scan.junkIsBlank = False
            return
        if self.inSeparator:
            lineEnd = data.find(b"\n")
            if lineEnd < 0:
                reader.separator(data)
                return
            reader.separator(data[:lineEnd + 1])
            data = data[lineEnd + 1:]
            self.inSeparator = False
            self.contentStart = until - len(data)
        reader.feed(data)

    def separatorAt(self, buffer: bytes, base: int, start: int, contentEnd: int) -> None:
        """
        A separator line starts at C{start}; the content before it ended at
        C{contentEnd}.
        """
        if self.reader is None:
            self.advance(buffer, base, start)
        else:
            self.advance(buffer, base, contentEnd)
            self.finishMessage(contentEnd)
            self.cursor = start
        self.reader = MessageReader()
        self.inSeparator = True
        self.start = start
        self.contentStart = start

    def stopAt(self, buffer: bytes, base: int, start: int, contentEnd: int) -> SpoolScan:
        """
        End the scan before the separator line at C{start}, the message
        being read having ended at C{contentEnd}: the scan's limit.
        """
        self.advance(buffer, base, contentEnd)
        self.finishMessage(contentEnd)
        self.scan.length = start
        self.scan.more = True
        return self.scan

    def finishMessage(self, end: int) -> None:
        """
        The message being read ends at C{end}.
        """
        reader = self.reader
        assert reader is not None
        if self.inSeparator:
            self.contentStart = end
        self.scan.add(self.start, self.contentStart, end, reader.finish())

    def atEnd(self, buffer: bytes, base: int, length: int) -> SpoolScan:
        """
        The spool ends at C{length}: end its last message before the blank
        line that ends it, if any.
        """
        if self.reader is not None and self.inSeparator:
            lineEnd = buffer.find(b"\n", self.cursor - base)
            if lineEnd >= 0:
                self.advance(buffer, base, base + lineEnd + 1)
        end = length
        if self.reader is not None and not self.inSeparator:
            tail = buffer[max(self.contentStart, length - 3) - base:]
            if tail == b"\n" or tail.endswith(b"\n\n"):
                end -= 1
            elif tail == b"\r\n" or tail.endswith(b"\n\r\n"):
                end -= 2
        self.advance(buffer, base, end)
        if self.reader is not None:
            self.finishMessage(end)
        self.scan.length = length
        return self.scan


def scanSpool(
    fd: int, pause: Callable[[], None] = _nothing, readSize: int = READ_SIZE, start: int = 0,
    limit: int = MAX_MESSAGES,
) -> SpoolScan:
    """
    Split the spool open as C{fd} into messages, reading it to its end, or
    to the start of the message after the first C{limit} (at least 1).

    @param pause: called after each chunk (to let other threads run).
    @param start: where to start reading, as if the spool started there
        (a message's separator line, for a scan that goes on from a kept
        one); offsets are the spool's all the same.
    """
    scanner = _Scanner(start)
    overlap = _BEFORE_SPOOL
    offset = start
    while True:
        chunk = os.pread(fd, readSize, offset)
        buffer = overlap + chunk
        base = offset - len(overlap)
        offset += len(chunk)
        for match in _SEPARATOR.finditer(buffer):
            if match.end() <= len(overlap):
                continue
            start = base + match.end() - len(b"From ")
            if scanner.reader is not None and len(scanner.scan) + 1 >= limit:
                return scanner.stopAt(buffer, base, start, base + match.start() + 1)
            scanner.separatorAt(buffer, base, start, base + match.start() + 1)
        if not chunk:
            return scanner.atEnd(buffer, base, offset)
        scanner.advance(buffer, base, offset - _OVERLAP)
        overlap = buffer[-_OVERLAP:]
        pause()


def readMessage(
    fd: int, start: int, contentStart: int, end: int, keep: Callable[[bytes], None] = _nothing,
    readSize: int = READ_SIZE,
) -> MessageFacts:
    """
    Read one message of the spool open as C{fd}, where a scan found it,
    giving its unquoted content to C{keep}; return its facts (to compare
    with the scan's: another program may have changed the spool since).
    """
    reader = MessageReader(keep)
    position = start
    while position < end:
        chunk = os.pread(fd, min(readSize, end - position), position)
        if not chunk:
            break
        if position < contentStart:
            cut = min(len(chunk), contentStart - position)
            reader.separator(chunk[:cut])
            reader.feed(chunk[cut:])
        else:
            reader.feed(chunk)
        position += len(chunk)
    return reader.finish()
