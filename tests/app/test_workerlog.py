"""
Tests for L{popsrv.app.workerlog}: a worker's events reach its pipe as JSON
lines, in order, a batch at a time, and at once when they matter.
"""

from __future__ import annotations

import os
import threading
from typing import Iterator, Tuple

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher
from twisted.python import threadable
from zope.interface.verify import verifyObject

from popsrv.app.workerlog import BATCH_OCTETS, FLUSH_DELAY, BatchingLineObserver, decodeEvent


@pytest.fixture(autouse=True)
def ioThread() -> Iterator[None]:
    """
    This thread is the reactor's while a test runs, as in a worker.
    """
    previous = threadable.ioThread
    threadable.registerAsIOThread()
    yield
    threadable.ioThread = previous


@pytest.fixture
def pipe() -> Iterator[Tuple[int, int]]:
    """
    A real pipe: the worker's end and the parent's end.
    """
    readEnd, writeEnd = os.pipe()
    os.set_blocking(readEnd, False)
    yield readEnd, writeEnd
    for fd in (readEnd, writeEnd):
        try:
            os.close(fd)
        except OSError:
            pass


def readLines(fd: int) -> list[dict]:
    """
    The events written to the pipe so far, decoded as the parent does.
    """
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    assert data == b"" or data.endswith(b"\n")
    return [decodeEvent(line.decode("utf-8")) for line in data.splitlines()]


def observed(clock: Clock, fd: int) -> Tuple[BatchingLineObserver, Logger]:
    """
    An observer writing to C{fd} on C{clock}, and a logger publishing to it.
    """
    observer = BatchingLineObserver(clock, fd)
    return observer, Logger(namespace="test", observer=LogPublisher(observer))


def test_providesILogObserver(pipe: Tuple[int, int]) -> None:
    verifyObject(ILogObserver, BatchingLineObserver(Clock(), pipe[1]))


def test_infoEventsAreHeldThenWrittenInOneWrite(pipe: Tuple[int, int]) -> None:
    clock = Clock()
    observer, log = observed(clock, pipe[1])
    for index in range(3):
        log.info("event {index}", index=index, event="probe")
    assert readLines(pipe[0]) == []
    assert observer.writes == 0
    clock.advance(FLUSH_DELAY)
    events = readLines(pipe[0])
    assert [event["index"] for event in events] == [0, 1, 2]
    assert events[0]["log_level"] is LogLevel.info
    assert observer.writes == 1
    # One timer per batch: the next event starts another.
    assert clock.getDelayedCalls() == []
    log.info("again")
    assert len(clock.getDelayedCalls()) == 1


@pytest.mark.parametrize("level", ["warn", "error", "critical"])
def test_aWarningIsWrittenAtOnceWithTheEventsBeforeIt(pipe: Tuple[int, int], level: str) -> None:
    clock = Clock()
    observer, log = observed(clock, pipe[1])
    log.info("first")
    log.debug("second")
    getattr(log, level)("third")
    assert [event["log_format"] for event in readLines(pipe[0])] == ["first", "second", "third"]
    assert clock.getDelayedCalls() == []
    clock.advance(FLUSH_DELAY)
    assert observer.writes == 1


def test_aFullBatchIsWrittenAtOnce(pipe: Tuple[int, int]) -> None:
    clock = Clock()
    observer, log = observed(clock, pipe[1])
    filler = "x" * 1000
    count = 0
    while observer.writes == 0 and count < 100:
        log.info("{filler}", filler=filler)
        count += 1
    assert 1 < count < 100
    assert len(readLines(pipe[0])) == count
    assert count * len(filler) <= BATCH_OCTETS


def test_anEventFromAnotherThreadIsWrittenAtOnce(pipe: Tuple[int, int]) -> None:
    clock = Clock()
    observer, log = observed(clock, pipe[1])
    log.info("held")
    thread = threading.Thread(target=log.info, args=("from a thread",))
    thread.start()
    thread.join()
    assert [event["log_format"] for event in readLines(pipe[0])] == ["held", "from a thread"]


def test_flushWritesWhatIsHeld(pipe: Tuple[int, int]) -> None:
    clock = Clock()
    observer, log = observed(clock, pipe[1])
    observer.flush()
    assert observer.writes == 0
    log.info("held")
    observer.flush()
    assert [event["log_format"] for event in readLines(pipe[0])] == ["held"]
    clock.advance(FLUSH_DELAY)
    assert observer.writes == 1


@pytest.mark.parametrize(
    "hostile",
    [
        "line\nbreak\r\n",
        "\udcff\udc80 undecodable octets of a login name",
        "\x00\x1b[31m\u2028\u202e",
        "\ufeff" + "é" * 2000,
    ],
)
def test_hostileTextStaysOneLine(pipe: Tuple[int, int], hostile: str) -> None:
    """
    Whatever a client sent that reaches an event (a login name, a command)
    is one line of the pipe, and decodes to the same text.
    """
    clock = Clock()
    observer, log = observed(clock, pipe[1])
    log.info("user {user}", user=hostile)
    log.info("after")
    observer.flush()
    events = readLines(pipe[0])
    assert [event["log_format"] for event in events] == ["user {user}", "after"]
    assert events[0]["user"] == hostile


def test_aClosedPipeIsNoError(pipe: Tuple[int, int]) -> None:
    """
    When the parent is gone, writing fails quietly: the worker stops on
    its own at the end of its standard input.
    """
    clock = Clock()
    observer, log = observed(clock, pipe[1])
    os.close(pipe[0])
    log.info("nobody reads this")
    log.error("nor this")
    clock.advance(FLUSH_DELAY)
    assert observer.writes == 1


def test_anEventLoggedWhileWritingIsWrittenAfterIt(pipe: Tuple[int, int]) -> None:
    """
    An event logged while the observer writes, in the same thread (by a
    signal handler, as Twisted's on SIGTERM logs), does not wait for the
    lock the write holds: the write in progress takes it too, in order.
    """
    clock = Clock()
    observer, log = observed(clock, pipe[1])
    write = observer._write

    def interrupted(data: bytes) -> bool:
        if observer.writes == 1:
            log.info("from a signal handler")
            log.error("and an error")
        return write(data)

    observer._write = interrupted  # type: ignore[method-assign]
    log.warn("first")
    assert [event["log_format"] for event in readLines(pipe[0])] == ["first", "from a signal handler", "and an error"]
    assert observer.writes == 2
    assert clock.getDelayedCalls() == []


def eventOf(format: str, **fields: object) -> dict:
    """
    The event a Logger makes of C{format} and C{fields}.
    """
    events: list = []
    Logger(namespace="popsrv.pop3.protocol.POP3Protocol", observer=events.append).info(format, **fields)
    return events[0]


@pytest.mark.parametrize(
    "format, fields",
    [
        ("session of {user} from {peer} ended ({how}): {t}s [session {session}]",
         {"user": "alice", "peer": "127.0.0.1:1", "how": "quit", "t": 0.0135, "session": "abc", "event": "x"}),
        ("{count:>5} of {total:.1f}%, {name!r} {flag} {nothing}",
         {"count": 7, "total": 12.345, "name": "it's", "flag": True, "nothing": None}),
        ("user {user}", {"user": "\udcff\x00\u202e\ufeff\r\nalice"}),
    ],
)
def test_leanEventsReadAsTwistedsDo(format: str, fields: dict) -> None:
    """
    An event of plain fields goes in the lean form, and the parent gets
    an event with the same fields, level and text as the worker's own
    (Twisted's form drops format specifications: "{total:.1f}" of 12.345
    reads "12.345" from it).
    """
    from twisted.logger import formatEvent

    from popsrv.app.workerlog import encodeEvent

    event = eventOf(format, **fields)
    line = encodeEvent(event)
    assert line.startswith("L") and "\n" not in line
    lean = decodeEvent(line)
    assert formatEvent(lean) == formatEvent(event)
    assert lean["log_level"] is LogLevel.info
    for key, value in fields.items():
        assert lean[key] == value


@pytest.mark.parametrize(
    "format, fields",
    [
        ("an address {address}", {"address": ("127.0.0.1", 110)}),
        ("an object {thing}", {"thing": object()}),
        ("octets {data}", {"data": b"\xff"}),
        ("an attribute {user.upper}", {"user": "alice"}),
        ("an index {users[0]}", {"users": "alice"}),
    ],
)
def test_otherEventsGoInTwistedsForm(format: str, fields: dict) -> None:
    """
    Objects, tuples and octets (which Twisted's form renders ahead), and
    formats that name more than keys, go in Twisted's form, and read as
    it does.
    """
    from twisted.logger import formatEvent

    from popsrv.app.workerlog import encodeEvent

    event = eventOf(format, **fields)
    line = encodeEvent(event)
    assert line.startswith("{")
    assert formatEvent(decodeEvent(line)) == formatEvent(event)


@pytest.mark.parametrize(
    "line",
    [
        'L{"log_format": "{user.__class__.__mro__}", "user": "x", "log_level": "info"}',
        'L{"log_format": "{users[0]}", "users": "x", "log_level": "info"}',
        'L{"log_format": "hi", "log_level": "loud"}',
        'L{"log_format": 5, "log_level": "info"}',
        'L["log_format"]',
        "L",
        "Lnot json",
        "plain text a worker printed",
        "[1, 2]",
    ],
)
def test_theParentRefusesForgedLines(line: str) -> None:
    """
    A line no worker's encoder makes (from a worker that went wrong) is not
    an event: the parent logs it as text. A lean line cannot make the
    parent format more than keys of plain values.
    """
    with pytest.raises(ValueError):
        decodeEvent(line)
