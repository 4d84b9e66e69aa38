"""
Exhaustive tests of the POP3 framing state machine against a line-by-line
reference implementation.
"""

from itertools import combinations, product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popsrv.wire.framing import TERMINATOR, MessageFramer, normalizedSize

ALPHABET = b"a.\r\n"


def referenceLines(message: bytes) -> list[bytes]:
    """
    Split a stored message into its lines without their line ends, the
    obvious way: a line ends at LF, an LF's preceding CR belongs to the end.
    """
    parts = message.split(b"\n")
    lines = [p[:-1] if p.endswith(b"\r") else p for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def reference(message: bytes, bodyLines=None) -> bytes:
    """
    The wire form of a message (RETR, or TOP with C{bodyLines}), built line by
    line.
    """
    lines = referenceLines(message)
    if bodyLines is not None:
        if b"" in lines:
            blank = lines.index(b"")
            lines = lines[: blank + 1 + bodyLines]
    out = []
    for line in lines:
        if line.startswith(b"."):
            line = b"." + line
        out.append(line + b"\r\n")
    return b"".join(out) + TERMINATOR


def frame(chunks, bodyLines=None) -> bytes:
    """
    Run the framer over chunks the way the protocol does, stopping early when
    it says it is done.
    """
    framer = MessageFramer(bodyLines)
    out = []
    for chunk in chunks:
        out.append(framer.feed(chunk))
        if framer.done:
            break
    out.append(framer.finish())
    return b"".join(out)


def allMessages(maxLength):
    """
    Every string over the alphabet up to a length.
    """
    for length in range(maxLength + 1):
        for letters in product(ALPHABET, repeat=length):
            yield bytes(letters)


def allSplits(message):
    """
    Every way to cut a message into consecutive non-empty chunks.
    """
    n = len(message)
    if n == 0:
        yield []
    for count in range(n):
        for cuts in combinations(range(1, n), count):
            bounds = (0,) + cuts + (n,)
            yield [message[a:b] for a, b in zip(bounds, bounds[1:])]


def someSplits(message):
    """
    The whole message, every cut into two, and one byte at a time.
    """
    yield [message]
    for cut in range(1, len(message)):
        yield [message[:cut], message[cut:]]
    yield [message[i : i + 1] for i in range(len(message))]


def test_retrEveryStringEverySplit():
    """
    RETR framing equals the reference for every string of up to 7 octets over
    C{a . CR LF}, cut into chunks at every possible set of points.
    """
    checked = 0
    for message in allMessages(7):
        expected = reference(message)
        for chunks in allSplits(message):
            assert frame(chunks) == expected, (message, chunks)
            checked += 1
    assert checked == sum(4**n * 2 ** max(n - 1, 0) for n in range(8))


@pytest.mark.parametrize("bodyLines", [0, 1, 2, 3])
def test_topEveryString(bodyLines):
    """
    TOP framing equals the reference for every string of up to 7 octets,
    for 0 to 3 body lines, whole, in two, and byte by byte.
    """
    for message in allMessages(7):
        expected = reference(message, bodyLines)
        for chunks in someSplits(message):
            assert frame(chunks, bodyLines) == expected, (message, chunks)


def test_sizeEveryStringEverySplit():
    """
    L{normalizedSize} is the length of the framed message before
    dot-stuffing and without the terminator, for every short string and
    split.
    """
    for message in allMessages(7):
        expected = sum(len(line) + 2 for line in referenceLines(message))
        for chunks in someSplits(message):
            assert normalizedSize(chunks) == expected, (message, chunks)


def test_topZeroSendsHeadersAndBlankLine():
    """
    TOP n 0 sends the headers and the blank line, never a body line.
    """
    message = b"Subject: x\nFrom: y\n\nbody 1\nbody 2\n"
    assert frame([message], 0) == b"Subject: x\r\nFrom: y\r\n\r\n.\r\n"
    assert frame([message], 1) == b"Subject: x\r\nFrom: y\r\n\r\nbody 1\r\n.\r\n"
    assert frame([message], 99) == (
        b"Subject: x\r\nFrom: y\r\n\r\nbody 1\r\nbody 2\r\n.\r\n"
    )


def test_topWithoutBlankLineSendsEverything():
    """
    A message with no blank line is all headers: TOP sends all of it.
    """
    assert frame([b"A: b\nC: d"], 0) == b"A: b\r\nC: d\r\n.\r\n"


def test_finalLineEndAdded():
    """
    A stored message without a final line end gets CRLF before the
    terminator; an empty message is only the terminator.
    """
    assert frame([b"x"]) == b"x\r\n.\r\n"
    assert frame([]) == b".\r\n"
    assert frame([b""]) == b".\r\n"


def test_dotStuffingAcrossChunks():
    """
    A "." at the start of a chunk that starts a line is stuffed; one that
    does not start a line is not.
    """
    assert frame([b"a\n", b".b\n"]) == b"a\r\n..b\r\n.\r\n"
    assert frame([b"a", b".b\n"]) == b"a.b\r\n.\r\n"
    assert frame([b"a\r", b"\n.", b"\n"]) == b"a\r\n..\r\n.\r\n"


@given(st.lists(st.binary(max_size=300), max_size=8), st.one_of(st.none(), st.integers(0, 20)))
def test_arbitraryBinaryChunks(chunks, bodyLines):
    """
    Framing of arbitrary binary content in arbitrary chunks equals the
    reference.
    """
    message = b"".join(chunks)
    assert frame(chunks, bodyLines) == reference(message, bodyLines)
    if bodyLines is None:
        assert normalizedSize(chunks) == sum(
            len(line) + 2 for line in referenceLines(message)
        )


_lines = st.lists(
    st.one_of(
        st.just(b"x" * 700),
        st.binary(max_size=40).map(lambda line: line.replace(b".", b"")),
        st.sampled_from([b".", b"..", b".x", b"a.b", b"\r", b". ", b"end."]),
    ),
    max_size=60,
)


@given(_lines, st.sampled_from([b"\n", b"\r\n"]), st.integers(1, 5000))
def test_longDataWithFewDots(lines, end, chunkSize):
    """
    Long data with few dots (looked at one by one) or many (stuffed by a
    replace), in chunks of any size, frames as the reference does.
    """
    message = end.join(lines)
    chunks = [message[start:start + chunkSize] for start in range(0, len(message), chunkSize)]
    assert frame(chunks) == reference(message)
