"""
Tests of splitting mbox spools into messages (L{popsrv.store.mbox.parsing}),
mboxrd unquoting, header reading and uids, against line-by-line reference
implementations: exhaustively over short strings of a small alphabet, with
hypothesis over longer ones, every way of cutting them into chunks, and
hostile spools (binary, NUL, megabyte lines, junk, forged headers).
"""

from __future__ import annotations

import os
import re
from itertools import product
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsrv.store.mbox.headers import isRead, stableHeaders, uidCandidate
from popsrv.store.mbox.parsing import MessageReader, SpoolScan, readMessage, scanSpool
from popsrv.store.mbox.uids import assignUids
from popsrv.store.mbox.unquoting import Unquoter, unquote
from tests.support.wire import wire

# References


def referenceUnquote(content: bytes) -> bytes:
    """
    mboxrd unquoting, line by line.
    """
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", content)
    return b"".join(line[1:] if re.match(rb">+From ", line) else line for line in lines)


def referenceSplit(spool: bytes) -> Tuple[bytes, List[Tuple[bytes, bytes]]]:
    """
    Split a spool line by line: the junk before the first message, and each
    message's separator line and (still quoted) content.
    """
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", spool)
    junk: List[bytes] = []
    messages: List[Tuple[bytes, List[bytes]]] = []
    previousBlank = True
    for line in lines:
        if line.startswith(b"From ") and previousBlank:
            if messages and messages[-1][1] and messages[-1][1][-1] in (b"\n", b"\r\n"):
                messages[-1][1].pop()
            messages.append((line, []))
        elif messages:
            messages[-1][1].append(line)
        else:
            junk.append(line)
        previousBlank = line in (b"\n", b"\r\n")
    if messages and messages[-1][1] and messages[-1][1][-1] in (b"\n", b"\r\n"):
        messages[-1][1].pop()
    return b"".join(junk), [(separator, b"".join(content)) for separator, content in messages]


def spoolFile(tmp_path: Path, data: bytes) -> int:
    """
    Write a spool and open it; the test's cleanup closes nothing: the
    descriptor is closed by the caller.
    """
    path = tmp_path / "spool"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def scanned(fd: int, readSize: int) -> Tuple[SpoolScan, List[bytes]]:
    """
    Scan a spool and read every message it found back, unquoted.
    """
    scan = scanSpool(fd, readSize=readSize)
    contents = []
    for index in range(len(scan)):
        kept: List[bytes] = []
        facts = readMessage(fd, scan.starts[index], scan.contentStarts[index], scan.ends[index], kept.append)
        assert facts.size == scan.sizes[index] and facts.digest == scan.digests[index]
        contents.append(b"".join(kept))
    return scan, contents


def checkAgainstReference(tmp_path: Path, spool: bytes, readSizes=(1, 2, 3, 7, 8, 64, 1 << 20)) -> SpoolScan:
    """
    Scan C{spool} with several chunk sizes: every scan agrees with the
    reference split, and sizes are the wire sizes of the unquoted content.
    """
    junk, expected = referenceSplit(spool)
    fd = spoolFile(tmp_path, spool)
    try:
        first: Optional[SpoolScan] = None
        for readSize in readSizes:
            scan, contents = scanned(fd, readSize)
            assert scan.junk == len(junk), (spool, readSize)
            assert [spool[s:c] for s, c in zip(scan.starts, scan.contentStarts)] == [sep for sep, _ in expected]
            assert [spool[c:e] for c, e in zip(scan.contentStarts, scan.ends)] == [content for _, content in expected]
            assert contents == [referenceUnquote(content) for _, content in expected], (spool, readSize)
            assert list(scan.sizes) == [len(wire(content)) for content in contents]
            assert scan.length == len(spool)
            if first is None:
                first = scan
            else:
                assert scan.digests == first.digests and scan.candidates == first.candidates
        assert first is not None
        return first
    finally:
        os.close(fd)


# Unquoting

UNQUOTE_ALPHABET = [b">", b"F", b"From", b" ", b"\n", b"x", b"\r"]


def test_unquoteExhaustively() -> None:
    """
    Every string of up to 6 pieces of C{>}, C{F}, C{From}, space, LF, CR and
    C{x}, cut into two chunks anywhere, unquotes as the reference does.
    """
    for length in range(7):
        for pieces in product(UNQUOTE_ALPHABET, repeat=length):
            content = b"".join(pieces)
            expected = referenceUnquote(content)
            for cut in range(len(content) + 1):
                unquoter = Unquoter()
                got = unquoter.feed(content[:cut]) + unquoter.feed(content[cut:]) + unquoter.finish()
                assert got == expected, (content, cut)


@given(st.lists(st.sampled_from([b">", b">>>", b"From ", b"Fro", b"m ", b"\n", b"\r\n", b"x", b"From"]),
                max_size=40),
       st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=20))
def test_unquoteInAnyChunks(pieces: List[bytes], sizes: List[int]) -> None:
    """Longer contents, cut into chunks of many sizes, unquote as the reference does."""
    content = b"".join(pieces)
    unquoter = Unquoter()
    out, position, turn = [], 0, 0
    while position < len(content):
        size = sizes[turn % len(sizes)]
        out.append(unquoter.feed(content[position:position + size]))
        position += size
        turn += 1
    out.append(unquoter.finish())
    assert b"".join(out) == referenceUnquote(content)


def test_unquoteHoldsBackOnlyAFewOctets() -> None:
    """A line of a million > is given out as it comes, but for one > and the letters of From."""
    unquoter = Unquoter()
    assert unquoter.feed(b">" * 1_000_000) == b">" * 999_999
    assert unquoter.feed(b"Fro") == b""
    assert unquoter.feed(b"m x\n") == b"From x\n"
    assert unquote(b">From a\nb>From c\n>>From d") == b"From a\nb>From c\n>From d"


# Splitting: the rules of the issue, one by one


def test_separatorsAfterBlankLinesOrAtTheStart(tmp_path: Path) -> None:
    """
    From lines at the start or after a blank line separate messages; the
    separator line and the blank line before the next are not content.
    """
    spool = (b"From a@example.org Mon Jan  1 00:00:00 2024\nSubject: one\n\nbody one\n\n"
             b"From b@example.org Mon Jan  1 00:00:01 2024\nSubject: two\n\nbody two\n\n")
    scan = checkAgainstReference(tmp_path, spool)
    assert len(scan) == 2
    fd = spoolFile(tmp_path, spool)
    try:
        _, contents = scanned(fd, 1 << 20)
    finally:
        os.close(fd)
    assert contents == [b"Subject: one\n\nbody one\n", b"Subject: two\n\nbody two\n"]


def test_fromInBodies(tmp_path: Path) -> None:
    """
    A From line after a non-blank line is content; quoted ones lose one >
    (mboxrd), also after a blank line.
    """
    spool = (b"From a Mon Jan  1 00:00:00 2024\nSubject: x\n\nline\nFrom not a separator\n"
             b"\n>From quoted after a blank line\n>>From twice\n>From\nFrom\n\n")
    fd = spoolFile(tmp_path, spool)
    try:
        scan, contents = scanned(fd, 5)
    finally:
        os.close(fd)
    assert contents == [b"Subject: x\n\nline\nFrom not a separator\n\nFrom quoted after a blank line\n"
                        b">From twice\n>From\nFrom\n"]
    assert scan.sizes[0] == len(wire(contents[0]))


def test_contentLengthIsNeverTrusted(tmp_path: Path) -> None:
    """A Content-Length that says the message is longer, or shorter, changes nothing."""
    spool = (b"From a Mon Jan  1 00:00:00 2024\nContent-Length: 5000\n\nshort\n\n"
             b"From b Mon Jan  1 00:00:00 2024\nContent-Length: 1\n\nlonger than one\n")
    scan = checkAgainstReference(tmp_path, spool)
    assert len(scan) == 2


def test_lastMessageWithoutFinalNewline(tmp_path: Path) -> None:
    """The last message may lack its final line end: it is sent with CRLF added, and its size counts it."""
    spool = b"From a Mon Jan  1 00:00:00 2024\nSubject: x\n\nno newline at the end"
    scan = checkAgainstReference(tmp_path, spool)
    assert scan.sizes[0] == len(b"Subject: x\r\n\r\nno newline at the end\r\n")


@pytest.mark.parametrize("spool", [b"From a x\r\nSubject: y\r\n\r\nbody\r\n\r\nFrom b x\r\nS: z\r\n\r\nb\r\n\r\n",
                                   b"From a x\nA: b\r\n\nmixed\r\n\r\nFrom b x\r\n\r\n\n"])
def test_crlfAndMixedSpools(tmp_path: Path, spool: bytes) -> None:
    """CRLF spools (and mixed ones) split alike; the blank CRLF line before a separator is the format's."""
    scan = checkAgainstReference(tmp_path, spool)
    assert len(scan) == 2


def test_emptySpool(tmp_path: Path) -> None:
    """An empty spool has no messages."""
    scan = checkAgainstReference(tmp_path, b"")
    assert len(scan) == 0 and scan.junk == 0 and scan.junkIsBlank


def test_junkBeforeTheFirstMessageIsSkipped(tmp_path: Path) -> None:
    """
    What comes before the first separator is not a message: its length is
    reported, and whether it was only blank lines.
    """
    scan = checkAgainstReference(tmp_path, b"garbage\nFrom inside the junk\n\nFrom a x\nS: y\n\nb\n")
    assert len(scan) == 1 and scan.junk == len(b"garbage\nFrom inside the junk\n\n")
    assert not scan.junkIsBlank
    blank = checkAgainstReference(tmp_path, b"\r\n\nFrom a x\nS: y\n\nb\n")
    assert len(blank) == 1 and blank.junk == 3 and blank.junkIsBlank


def test_garbageBinarySpool(tmp_path: Path) -> None:
    """A binary spool without a separator is all junk: no message, no error."""
    data = bytes(range(256)) * 4000
    scan = checkAgainstReference(tmp_path, data, readSizes=(4096, 1 << 20))
    assert len(scan) == 0 and scan.junk == len(data) and not scan.junkIsBlank


def test_nulOctetsAndEightBit(tmp_path: Path) -> None:
    """NUL and 8-bit octets are content like any other."""
    spool = b"From a x\nSubject: \xff\x00\n\n\x00\x00\nFrom\x00 x\n\xc3\xa9\n"
    scan = checkAgainstReference(tmp_path, spool)
    assert len(scan) == 1


def test_megabyteLines(tmp_path: Path) -> None:
    """
    Lines of megabytes without a line end (in the separator line, the
    headers, the body) split and measure as the reference says.
    """
    big = b"x" * (3 * 1024 * 1024)
    spool = (b"From a " + big + b"\nSubject: " + big + b"\n\n" + big + b"\n\n"
             b"From b x\n\n>" * 3 + b"From " + big)
    scan = checkAgainstReference(tmp_path, spool, readSizes=(65536, 1 << 20))
    assert len(scan) == 4


def test_aSeparatorAcrossChunks(tmp_path: Path) -> None:
    """A separator whose blank line and From are read in different chunks is found (every chunk size)."""
    spool = b"From a x\nS: 1\n\nb\r\n\r\nFrom b x\nS: 2\n\nc\n\nFrom c\n"
    checkAgainstReference(tmp_path, spool, readSizes=range(1, len(spool) + 2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"From ", b"From a\n", b">From ", b">", b"\n", b"\r\n", b"\r", b"x", b"S: y\n",
                                 b"Status: RO\n", b"X-UIDL: u1\n"]), max_size=30),
       st.sampled_from([1, 2, 3, 5, 8, 13, 1 << 20]))
def test_anySpoolMatchesTheReference(tmp_path_factory: pytest.TempPathFactory, pieces: List[bytes],
                                     readSize: int) -> None:
    """Any spool of these pieces splits, unquotes and measures as the reference does."""
    checkAgainstReference(tmp_path_factory.mktemp("spool"), b"".join(pieces), readSizes=(readSize, 1 << 20))


# Headers and uids


def test_stableHeadersDropWhatMailProgramsRewrite() -> None:
    """Status, X-Status, X-UID, Content-Length and their like (folded too) are not part of the digest."""
    block = (b"Subject: s\nStatus: RO\nX-Status: A\nx-uid: 7\nX-Keywords: a\n b\nContent-Length: 9\n"
             b"Lines: 2\nX-IMAPbase: 1 2\nX-UIDL: q\nTo: t\n\n")
    assert stableHeaders(block) == b"Subject: s\nTo: t\n\n"


def test_digestIgnoresVolatileHeadersOnly() -> None:
    """Changing Status keeps a message's digest; changing anything else (even the separator line) does not."""

    def digest(separator: bytes, content: bytes) -> bytes:
        reader = MessageReader()
        reader.separator(separator)
        reader.feed(content)
        return reader.finish().digest

    base = digest(b"From a x\n", b"Subject: s\n\nbody\n")
    assert digest(b"From a x\n", b"Subject: s\nStatus: RO\nX-Status: F\n\nbody\n") == base
    assert digest(b"From a y\n", b"Subject: s\n\nbody\n") != base
    assert digest(b"From a x\n", b"Subject: s\n\nbody!\n") != base
    assert digest(b"From a x\n", b"Subject: s\n\nStatus: RO\nbody\n") != base


@pytest.mark.parametrize("header, expected", [
    (b"X-UIDL: 3a1b2c\n", "3a1b2c"),
    (b"X-UIDL:  3a1b2c  \n", "3a1b2c"),
    (b"x-uidl:\n 3a1b2c\n", "3a1b2c"),
    (b"X-UIDL: " + b"a" * 70 + b"\n", "a" * 70),
    (b"X-UIDL: " + b"a" * 71 + b"\n", None),
    (b"X-UIDL: \n", None),
    (b"X-UIDL: two words\n", None),
    (b"X-UIDL: caf\xc3\xa9\n", None),
    (b"X-UIDL: a\x00b\n", None),
    (b"X-UIDL: a\rb\n", None),
    (b"X-UIDL: a\nX-UIDL: b\n", None),
    (b"Subject: X-UIDL: a\n", None),
])
def test_uidCandidates(header: bytes, expected: Optional[str]) -> None:
    """An X-UIDL is a candidate only if it is alone, 1 to 70 octets, each 0x21 to 0x7E."""
    assert uidCandidate(b"Subject: s\n" + header + b"\n") == expected


def test_statusRead() -> None:
    """Status with R marks a message read; O alone, or R elsewhere, does not."""
    assert isRead(b"Status: RO\n\n") and isRead(b"status:R\n\n")
    assert not isRead(b"Status: O\n\n") and not isRead(b"X-Status: R\n\n") and not isRead(b"Subject: R\n\n")


def test_uidsFromXUIDLOnlyWhenUnique() -> None:
    """
    X-UIDL values are used when unique and not another message's derived
    uid; duplicates and forgeries fall back to content-derived uids, which
    tell identical copies apart.
    """
    a, b, c = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
    assert assignUids([a, b], ["qpop1", "qpop2"]) == ["qpop1", "qpop2"]
    assert assignUids([a, b, c], ["dup", "dup", "ok"]) == [a.hex(), b.hex(), "ok"]
    assert assignUids([a, b], [None, a.hex()]) == [a.hex(), b.hex()]
    assert assignUids([a, a, a], [None, None, None]) == [a.hex(), a.hex() + "-2", a.hex() + "-3"]
    assert assignUids([a, a], [None, a.hex() + "-2"]) == [a.hex(), a.hex() + "-2"]
    uids = assignUids([a, b, a, c], [None, "x", a.hex() + "-2", "x"])
    assert len(set(uids)) == 4 and all(1 <= len(uid) <= 70 for uid in uids)
