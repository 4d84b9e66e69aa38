"""
Tests for parsing the names of C{cur/} partly in a helper process
(L{popsrv.store.maildir.sharedparse}, L{popsrv.store.maildir.helper}) and
for its use by a session's first listing of a big C{cur/}.
"""

from __future__ import annotations

import array
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, capturedLogs

from popsrv.store.maildir import MaildirMaildrop, helper, newmail, parsing, sharedparse
from popsrv.store.maildir import maildrop as maildropModule
from popsrv.store.maildir.directory import Directory
from popsrv.store.maildir.intake import OPEN_DIRECTORY
from popsrv.store.maildir.listing import CurListing, ListingCache
from tests.store.test_listing import namesInOrder

DEADLINE = 60


def names(count: int) -> List[str]:
    """
    Names of C{cur/} of every kind the parser knows: usual ones, some
    tying by delivery time or past the caps of L{parsing.timeKey}, some
    with flags, a line end or bytes that are not UTF-8, some of another
    form, and some that record no POP3 size.
    """
    made = []
    for number in range(count):
        kind = number % 10
        if kind < 5:
            made.append(f"{1_700_000_000 + number // 3}.M{number % 7}P{number}.host,S=9,W={10 + number}:2,S")
        elif kind == 5:
            made.append(f"1700000000.M5P{number}.tie,W={number}:2,")
        elif kind == 6:
            made.append(f"{'9' * 14}.M{'7' * 9}P{number}.cap,S=1,W=2")
        elif kind == 7:
            # Undecodable octets as the file system encoding gives them;
            # \udcd9\udca3 are those of U+0663, a digit in UTF-8.
            made.append(f"{1_600_000_000 + number}.odd\nline\udcff\udcd9\udca3,W={number}:2,FS")
        elif kind == 8:
            made.append(f"x{number},S=3,W=1,S=4:2,T")
        else:
            made.append(f"{1_700_000_000 + number}.M1P{number}.unsized:2,")
    return made


def makeCur(maildir: Path, fileNames: List[str]) -> Directory:
    """
    A C{cur/} of empty files of C{fileNames}, a FIFO, a link and a directory;
    return it opened.
    """
    cur = maildir / "cur"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for name in fileNames:
        with open(os.path.join(os.fsencode(cur), os.fsencode(name)), "wb"):
            pass
    os.mkfifo(cur / "a-fifo")
    os.symlink("/etc/passwd", cur / "a-link,W=1")
    (cur / "a-directory").mkdir()
    return Directory(os.open(cur, OPEN_DIRECTORY), "cur")


def inServer(fileNames: List[str]) -> CurListing:
    """
    The listing the server itself makes of C{fileNames}, leaving out those
    without a size.
    """
    listing = CurListing()
    listing.update(list(fileNames), lambda name: None)
    return listing


def columns(parsed: parsing.Columns) -> tuple:
    return list(parsed.times), parsed.names, parsed.uids, list(parsed.sizes), list(parsed.seen)


def shared(fileNames: List[str]) -> tuple:
    """
    Parse C{fileNames} sharing the work with a helper; return the listing
    adopted from what was parsed, and why the helper did not do its share
    (or C{None}).
    """
    sharing = sharedparse.ParseSharing()
    try:
        parsed, order, unsized = sharing.parse(list(fileNames), lambda count: None, lambda: None)
    finally:
        sharing.close()
    assert sorted(unsized) == sorted(name for name in fileNames if parsing.parseName(name) is None)
    listing = CurListing()
    listing.adopt(parsed, order, [], lambda name: None)
    return listing, sharing.problem


def sameListing(listing: CurListing, expected: CurListing) -> None:
    assert list(listing.messages) == list(expected.messages)
    assert listing.fileNames == expected.fileNames
    assert namesInOrder(listing) == namesInOrder(expected)


@pytest.mark.parametrize("share", [0.0, 0.4, 1.0])
def test_namesParsedWithAHelperAreParsedAsTheServerParsesThem(monkeypatch, share: float) -> None:
    """
    Names parsed partly (or wholly) by a helper, sorted there and merged,
    make the listing the server makes alone: ties, caps, line ends, bytes
    that are not UTF-8, names without a size.
    """
    monkeypatch.setattr(sharedparse, "HELPER_SHARE", share)
    fileNames = names(3000) + ["\udcd9\udca3.h,W=\udcd9\udca3", "\udcd9\udca3.h,W=4:2,S"]
    listing, problem = shared(fileNames)
    assert problem is None
    sameListing(listing, inServer(fileNames))


def test_anAdoptedListingMeasuresWhatHasNoSize(tmp_path: Path) -> None:
    """
    A listing adopted with names that record no size has each measured (by
    the function given), then goes on as any listing: an update later
    parses only what is new.
    """
    fileNames = names(40)
    unsized = [name for name in fileNames if parsing.parseName(name) is None]
    parsed = parsing.Columns()
    assert parsing.parseColumns(fileNames, parsed) == unsized
    times = list(parsed.times)
    order = parsing.tiesBroken(sorted(range(len(times)), key=times.__getitem__), times, parsed.names)
    measured = []

    def withSize(name: str) -> str:
        measured.append(name)
        return name.replace(":2,", ",W=5:2,")

    listing = CurListing()
    listing.adopt(parsed, array.array("q", order), unsized, withSize)
    assert measured == unsized
    renamed = [withSize(name) if name in unsized else name for name in fileNames]
    assert dict(listing.fileNames) == dict(inServer(renamed).fileNames)
    with pytest.raises(ValueError):
        listing.adopt(parsing.Columns(), array.array("q"), [], withSize)
    more = renamed + ["1800000000.M1P1.late,W=3:2,"]
    listing.update(more, withSize)
    assert namesInOrder(listing) == namesInOrder(inServer(more))


def packed(fileNames: List[str]) -> bytes:
    parsed = parsing.Columns()
    unsized = parsing.parseColumns(fileNames, parsed)
    return helper.packParsed(parsed, list(reversed(range(len(parsed)))), unsized)


def test_parsedNamesAreReadBackWhole() -> None:
    """
    Parsed names read back are those packed: names with line ends, bytes
    that are not UTF-8, names without a size, and none at all too.
    """
    fileNames = names(100)
    parsed = parsing.Columns()
    unsized = parsing.parseColumns(fileNames, parsed)
    again = parsing.Columns()
    order = [(7 * index) % len(parsed) for index in range(len(parsed))]
    assert helper.unpackParsed(helper.packParsed(parsed, order, unsized), fileNames, again) == (order, unsized)
    assert columns(again) == columns(parsed)
    empty = parsing.Columns()
    assert helper.unpackParsed(helper.packParsed(parsing.Columns(), [], []), [], empty) == ([], [])
    assert len(empty) == 0
    with pytest.raises(ValueError):
        helper.unpackParsed(helper.packParsed(parsed, order, unsized), fileNames[1:], parsing.Columns())
    with pytest.raises(ValueError):
        helper.unpackParsed(helper.packParsed(parsed, order, unsized), fileNames + ["x,W=1"], parsing.Columns())
    with pytest.raises(ValueError):
        helper.unpackParsed(helper.packParsed(parsed, order, unsized + ["other"]), fileNames, parsing.Columns())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_aDamagedListingIsRefused(data) -> None:
    """
    A listing cut short, longer than it says, or whose counts, flags or
    sizes do not add up is refused (ValueError), never half read.
    """
    fileNames = names(30)
    good = packed(fileNames)
    damage = data.draw(st.sampled_from(["cut", "grown", "byte", "mark"]))
    if damage == "cut":
        bad = good[:data.draw(st.integers(0, len(good) - 1))]
    elif damage == "grown":
        bad = good + data.draw(st.binary(min_size=1, max_size=20))
    elif damage == "mark":
        bad = b"x" + good[1:]
    else:
        # A byte of the counts, the times, sizes, order and seen flags.
        position = data.draw(st.integers(len(b"popsrv-parsed-1\n"), len(b"popsrv-parsed-1\n") + 24 + 25 * 27))
        bad = good[:position] + bytes([good[position] ^ data.draw(st.integers(1, 255))]) + good[position + 1:]
    target = parsing.Columns()
    try:
        order, _ = helper.unpackParsed(bad, fileNames, target)
    except (ValueError, UnicodeDecodeError):
        assert len(target) == 0
    else:
        assert sorted(order) == list(range(len(target)))
        # Only a changed time or size (still not negative), or an order
        # changed into another one, can pass.
        assert damage == "byte"
        assert len(target) == 27 and min(target.sizes) >= 0 and set(target.seen) <= {0, 1}


def test_negativeSizesOtherFlagsAndAnOrderOfOtherIndexesAreRefused() -> None:
    """
    A listing of a negative size, a seen flag other than 0 or 1, or an
    order that is not its names' indexes each once is refused.
    """
    fileNames = names(5)[:3]
    parsed = parsing.Columns()
    parsing.parseColumns(fileNames, parsed)
    for column, value in (("sizes", array.array("q", [1, -1, 2])), ("seen", bytearray([0, 2, 1]))):
        bad = parsing.Columns()
        for kept in ("times", "names", "uids", "sizes", "seen"):
            setattr(bad, kept, value if kept == column else getattr(parsed, kept))
        with pytest.raises(ValueError):
            helper.unpackParsed(helper.packParsed(bad, [0, 1, 2], []), fileNames, parsing.Columns())
    for order in ([0, 1, 1], [0, 1, 3], [-1, 0, 1], [0, 1]):
        with pytest.raises(ValueError):
            helper.unpackParsed(helper.packParsed(parsed, order, []), fileNames, parsing.Columns())


FAILING_HELPERS = {
    "cannot start": ["/nonexistent/python"],
    "fails": [sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit('NotADirectoryError: no')"],
    "takes nothing": [sys.executable, "-c", "import os; os.close(0)"],
    "writes junk": [sys.executable, "-c", "import sys; sys.stdin.read(); print('junk')"],
    "hangs": [sys.executable, "-c", "import signal, sys; sys.stdin.read(); signal.pause()"],
    "reads nothing": [sys.executable, "-c", "import signal; signal.pause()"],
}


@pytest.mark.parametrize("kind", sorted(FAILING_HELPERS))
def test_theServerParsesWhatAFailingHelperDidNot(monkeypatch, kind: str) -> None:
    """
    A helper that cannot start, fails, takes no names, writes what cannot
    be read, never reads them or never ends (it is killed): the server
    parses its share itself, making the same listing, and says why in one
    line; no helper process is left.
    """
    monkeypatch.setattr(sharedparse, "HELPER_TIMEOUT", 0.5)
    monkeypatch.setattr(sharedparse, "HELPER_TIME_PER_NAME", 0.0)
    monkeypatch.setattr(helper, "helperCommand", lambda *arguments: FAILING_HELPERS[kind])
    started = []
    popen = sharedparse.subprocess.Popen

    def recording(*args, **kwargs):
        process = popen(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(sharedparse.subprocess, "Popen", recording)
    # More than a pipe holds, for those that read nothing.
    fileNames = names(20_000 if kind in ("takes nothing", "reads nothing") else 300)
    listing, problem = shared(fileNames)
    sameListing(listing, inServer(fileNames))
    assert problem is not None and "\n" not in problem and "Traceback" not in problem
    expected = {
        "cannot start": "cannot start ", "fails": "NotADirectoryError: no", "takes nothing": "the helper took no names",
        "writes junk": "the helper's names are unusable", "hangs": "the helper did not finish in time",
        "reads nothing": "the helper took no names in time",
    }[kind]
    assert problem.startswith(expected)
    assert all(process.returncode is not None for process in started)


def test_aHelperParsesNothingOnceItsServerIsGone() -> None:
    """
    A helper whose server is gone (its parent is not the process it was
    started for) stops parsing and writes nothing.
    """
    command = helper.helperCommand("parse", os.getpid() + 1_000_000, parsing.CODE_DIGEST)
    done = subprocess.run(command, input=helper.joined(names(3000)), capture_output=True, timeout=DEADLINE)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_aHelperWhoseCodeIsNotTheServersRefusesToParse(tmp_path: Path, monkeypatch) -> None:
    """
    A helper whose parsing code differs from the server's (as after an
    upgrade under a running server) refuses, in one line; the session
    then does the work itself.
    """
    done = subprocess.run(
        helper.helperCommand("parse", os.getpid(), "0" * 16), input=helper.joined(names(10)), capture_output=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 1 and done.stdout == b"" and b"restart popsrv" in done.stderr
    monkeypatch.setattr(sharedparse, "CODE_DIGEST", "0" * 16)
    cur = makeCur(tmp_path, names(50))
    try:
        listed = sharedparse.listInHelper(cur, lambda: None)
        fileNames, _ = cur.listFiles()
    finally:
        cur.close()
    assert isinstance(listed, str) and "restart popsrv" in listed and "\n" not in listed
    listing, problem = shared(fileNames)
    assert problem is not None and "restart popsrv" in problem
    sameListing(listing, inServer(fileNames))


def test_aHelperGivenAnUnknownCommandSaysSoInOneLine() -> None:
    """
    A helper given an unknown command fails with a one-line reason.
    """
    done = subprocess.run(helper.helperCommand("remove", 1, 2), capture_output=True, timeout=DEADLINE)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().strip().count("\n") == 0 and "unknown command" in done.stderr.decode()


@pytest.fixture
def noOtherSessions(monkeypatch) -> None:
    """
    Count no Maildir as locked by other sessions (other tests of this
    process may have left some locked).
    """
    from popsrv.store.maildir.directory import OpenedMaildir

    monkeypatch.setattr(OpenedMaildir, "_locked", 0)


@pytest.fixture
def freshListings(monkeypatch) -> ListingCache:
    cache = ListingCache()
    monkeypatch.setattr(maildropModule, "LISTINGS", cache)
    return cache


def threadedSession(maildir: Path):
    maildrop = MaildirMaildrop(str(maildir), "alice", runner=lambda function, *args: function(*args))
    maildrop.lock()
    try:
        with capturedLogs() as events:
            messages = list(maildrop.listMessages())  # type: ignore[arg-type]
        return messages, events
    finally:
        maildrop.release()


@pytest.mark.parametrize("othersLoggedIn", [False, True], ids=["alone", "others logged in"])
def test_aSessionListsABigCurWithAHelper(
    tmp_path: Path, monkeypatch, freshListings, noOtherSessions, othersLoggedIn: bool
) -> None:
    """
    A session in a thread of its own makes the first listing of a
    C{cur/} of L{SHARING_MINIMUM} entries or more with a helper: sharing
    the parse when no other session is logged in, wholly in the helper
    when another is; it measures the messages without a size itself. The
    snapshot is the one the server makes alone, and the next listing
    (kept) uses no helper.
    """
    # Listed in the runner (not at once), and with a helper, though small.
    monkeypatch.setattr(maildropModule, "QUICK_DIRECTORY_SIZE", 0)
    monkeypatch.setattr(sharedparse, "SMALL_DIRECTORY", 0)
    monkeypatch.setattr(sharedparse, "SHARING_MINIMUM", 50)
    fileNames = names(60)
    makeCur(tmp_path / "alice", fileNames).close()
    for name in fileNames:
        with open(os.path.join(os.fsencode(tmp_path / "alice" / "cur"), os.fsencode(name)), "wb") as f:
            f.write(b"Subject: x\n\nbody\n")
    used = []

    class Spying(sharedparse.ParseSharing):
        def parse(self, names, account, pause, share=None):
            used.append(("shared", len(names)))
            return super().parse(names, account, pause, share)

    listInHelper = sharedparse.listInHelper

    def spyingList(cur, pause):
        used.append(("listed", None))
        return listInHelper(cur, pause)

    monkeypatch.setattr(sharedparse, "ParseSharing", Spying)
    monkeypatch.setattr(sharedparse, "listInHelper", spyingList)
    from popsrv.store.maildir.directory import OpenedMaildir

    assert OpenedMaildir.lockedCount() == 0
    other = MaildirMaildrop(str(tmp_path / "bob"), "bob")
    if othersLoggedIn:
        other.lock()
    try:
        messages, events = threadedSession(tmp_path / "alice")
    finally:
        other.release()
    assert used == ([("listed", None)] if othersLoggedIn else [("shared", 60)])
    assert [event for event in events if event.get("event") == "listing-helper-failed"] == []
    skipped = [event for event in events if event.get("event") == "not-a-file"]
    assert len(skipped) == 1 and skipped[0]["count"] == 3
    assert len(messages) == len(fileNames)
    monkeypatch.setattr(sharedparse, "SHARING_MINIMUM", 10**9)
    monkeypatch.setattr(maildropModule, "LISTINGS", ListingCache())
    assert threadedSession(tmp_path / "alice")[0] == messages
    monkeypatch.setattr(sharedparse, "SHARING_MINIMUM", 50)
    monkeypatch.setattr(maildropModule, "LISTINGS", freshListings)
    assert threadedSession(tmp_path / "alice")[0] == messages
    assert len(used) == 1


def test_lockedMaildirsAreCounted(tmp_path: Path) -> None:
    """
    The Maildirs sessions of this process hold locked are counted, each
    once, until released (however often), and so are the openings.
    """
    from popsrv.store.maildir.directory import OpenedMaildir

    before, opened = OpenedMaildir.lockedCount(), OpenedMaildir.openings()
    drops = [MaildirMaildrop(str(tmp_path / name), name) for name in ("a", "b")]
    drops[0].lock()
    assert OpenedMaildir.lockedCount() == before + 1
    drops[1].lock()
    assert OpenedMaildir.lockedCount() == before + 2
    drops[0].release()
    drops[0].release()
    assert OpenedMaildir.lockedCount() == before + 1
    drops[1].release()
    assert OpenedMaildir.lockedCount() == before
    assert OpenedMaildir.openings() == opened + 2


def test_aLoginDuringTheListingHandsTheHelperEveryName(tmp_path: Path, monkeypatch, noOtherSessions) -> None:
    """
    If another session logs in while this one lists C{cur/}, the helper
    is handed every name (this session's thread then parses none); else
    its share.
    """
    shares = []

    class Spying(sharedparse.ParseSharing):
        def parse(self, names, account, pause, share=None):
            shares.append(share)
            return super().parse(names, account, pause, share)

    monkeypatch.setattr(sharedparse, "ParseSharing", Spying)
    cur = makeCur(tmp_path / "alice", names(300))
    other = MaildirMaildrop(str(tmp_path / "bob"), "bob")
    listFiles = cur.listFiles

    def listWhileBobLogsIn(account):
        other.lock()
        other.release()
        return listFiles(account)

    try:
        expected = sharedparse.firstListing(cur, lambda count: None, lambda count: None, lambda: None)
        monkeypatch.setattr(cur, "listFiles", listWhileBobLogsIn)
        everything = sharedparse.firstListing(cur, lambda count: None, lambda count: None, lambda: None)
    finally:
        cur.close()
    assert shares == [sharedparse.HELPER_SHARE, 1.0]
    assert everything[4] is None and expected[4] is None
    first, second = CurListing(), CurListing()
    first.adopt(expected[0], expected[1], [], lambda name: None)
    second.adopt(everything[0], everything[1], [], lambda name: None)
    sameListing(second, first)


def test_aHelperListsCurAsTheServerDoes(tmp_path: Path) -> None:
    """
    A helper that lists and parses C{cur/} itself makes the listing the
    server makes alone, in the same order, and names the entries that are
    not regular files.
    """
    cur = makeCur(tmp_path, names(3000) + ["\udcd9\udca3.h,W=\udcd9\udca3", "\udcd9\udca3.h,W=4:2,S"])
    try:
        listed = sharedparse.listInHelper(cur, lambda: None)
        # The names as the server reads them.
        fileNames, _ = cur.listFiles()
    finally:
        cur.close()
    assert not isinstance(listed, str), listed
    parsed, order, unsized, others = listed
    listing = CurListing()
    listing.adopt(parsed, array.array("q", order), [], lambda name: None)
    sameListing(listing, inServer(fileNames))
    assert sorted(unsized) == sorted(name for name in fileNames if parsing.parseName(name) is None)
    assert sorted(others) == ["a-directory", "a-fifo", "a-link,W=1"]


def test_aHelperDecodesNamesAsTheServerDoes(tmp_path: Path, monkeypatch) -> None:
    """
    A listing helper decodes the names as the server's file system
    encoding does, whatever its own: the names it gives are those the
    server would read (here, as Latin-1).
    """
    cur = makeCur(tmp_path, ["1.\u0663,W=\u0663", "2.\u00e9,W=5:2,S", "3.x,W=4"])
    monkeypatch.setattr(sharedparse.sys, "getfilesystemencoding", lambda: "latin-1")
    try:
        listed = sharedparse.listInHelper(cur, lambda: None)
    finally:
        cur.close()
    monkeypatch.undo()
    assert not isinstance(listed, str), listed
    parsed, order, unsized, others = listed
    asLatin1 = sorted(os.fsencode(name).decode("latin-1", "surrogateescape") for name in os.listdir(tmp_path / "cur"))
    assert sorted(parsed.names + unsized + others) == asLatin1
    # Read as Latin-1, the Arabic-Indic digit is two letters: no size.
    assert unsized == ["1.\u00d9\u00a3,W=\u00d9\u00a3"]


@pytest.mark.parametrize("kind", ["fails", "junk", "unordered"])
def test_aListingHelperThatFailsLeavesItToTheSession(tmp_path: Path, monkeypatch, kind: str) -> None:
    """
    A listing helper that fails, writes junk or a listing out of the order
    of delivery is not trusted: the session lists and parses every name
    itself (no second helper), into the same listing, and the first
    listing says why.
    """
    cur = makeCur(tmp_path, names(300))
    # The names as the server reads them.
    fileNames, _ = cur.listFiles()
    listing = None
    if kind == "unordered":
        parsed = parsing.Columns()
        unsized = parsing.parseColumns(fileNames, parsed)
        times = list(parsed.times)
        backwards = sorted(range(len(times)), key=lambda index: -times[index])
        listing = helper.packListing(parsed, backwards, unsized, fileNames, [])
    scripts = {
        "fails": "import sys; sys.exit('NotADirectoryError: no')",
        "junk": "print('junk')",
        "unordered": f"import sys; sys.stdout.buffer.write({listing!r})",
    }
    helperCommand = helper.helperCommand

    started = []

    def command(*arguments):
        started.append(arguments[0])
        if arguments[0] == "list":
            return [sys.executable, "-c", scripts[kind]]
        return helperCommand(*arguments)

    monkeypatch.setattr(helper, "helperCommand", command)
    # This session's Maildir and another are locked: the listing is for a
    # helper.
    sessions = [MaildirMaildrop(str(tmp_path / name), name) for name in ("self", "bob")]
    for session in sessions:
        session.lock()
    try:
        parsed, order, unsized, others, problem = sharedparse.firstListing(
            cur, lambda count: None, lambda count: None, lambda: None
        )
    finally:
        for session in sessions:
            session.release()
        cur.close()
    adopted = CurListing()
    adopted.adopt(parsed, order, [], lambda name: None)
    sameListing(adopted, inServer(fileNames))
    assert sorted(others) == ["a-directory", "a-fifo", "a-link,W=1"]
    expected = {
        "fails": "NotADirectoryError: no", "junk": "the helper's listing is unusable",
        "unordered": "the helper's listing is not in the order of delivery",
    }[kind]
    assert problem is not None and problem.startswith(expected) and "\n" not in problem
    assert started == ["list"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_characters="\0"), max_size=12), max_size=40), st.integers(1, 30))
def test_namesAreSplitInStepsAsAtOnce(fileNames, step) -> None:
    """
    Names decoded a step at a time (however small) are those joined.
    """
    original = helper.SPLIT_STEP
    helper.SPLIT_STEP = step
    try:
        assert helper.splitInSteps(helper.joined(fileNames), lambda: None) == fileNames
    finally:
        helper.SPLIT_STEP = original


def test_aHelperThatFailsLeavesTheListingToTheServer(
    tmp_path: Path, monkeypatch, freshListings, noOtherSessions
) -> None:
    """
    If the helper cannot start, the session lists C{cur/} itself and logs
    why, once, with a stable event name.
    """
    # Listed in the runner (not at once), and shared, though small.
    monkeypatch.setattr(maildropModule, "QUICK_DIRECTORY_SIZE", 0)
    monkeypatch.setattr(sharedparse, "SMALL_DIRECTORY", 0)
    monkeypatch.setattr(sharedparse, "SHARING_MINIMUM", 5)
    monkeypatch.setattr(newmail.sys, "executable", str(tmp_path / "no-python"))
    fileNames = [name for name in names(20) if parsing.parseName(name) is not None]
    makeCur(tmp_path / "alice", fileNames).close()
    messages, events = threadedSession(tmp_path / "alice")
    assert len(messages) == len(fileNames)
    failures = [event for event in events if event.get("event") == "listing-helper-failed"]
    assert len(failures) == 1 and failures[0]["log_level"] == LogLevel.warn
    assert failures[0]["why"].startswith("cannot start ") and "Traceback" not in failures[0]["why"]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a/b,W=1", ".hidden,W=1", "..", "."])
def test_aListingOfNamesThatNoDirectoryHoldsIsRefused(bad: str) -> None:
    """
    A listing whose names hold a slash or start with a dot (which a
    listing leaves out), such as "..", is refused: names are used as file
    names within cur/.
    """
    fileNames = names(20)
    for where in ("names", "others"):
        parsed = parsing.Columns()
        listed = fileNames + [bad] if where == "names" else fileNames
        unsized = parsing.parseColumns(listed, parsed)
        times = list(parsed.times)
        order = sorted(range(len(times)), key=times.__getitem__)
        data = helper.packListing(parsed, order, unsized, listed, [bad] if where == "others" else [])
        with pytest.raises(ValueError):
            helper.unpackListing(data, parsing.Columns())


def test_aListingCutShortIsRefused() -> None:
    """
    A listing whose names or other entries do not end with a NUL (cut
    short) is refused.
    """
    fileNames = names(20)
    parsed = parsing.Columns()
    unsized = parsing.parseColumns(fileNames, parsed)
    times = list(parsed.times)
    order = sorted(range(len(times)), key=times.__getitem__)
    good = helper.packListing(parsed, order, unsized, fileNames, ["a-fifo"])
    assert helper.unpackListing(good, parsing.Columns())[2] == ["a-fifo"]
    bad = good[:-1] + b"x"
    with pytest.raises(ValueError):
        helper.unpackListing(bad, parsing.Columns())


def test_theCodeDigestOfUnreadableCodeIsAMark(monkeypatch) -> None:
    """
    The digest of the parsing code is of the files this process loaded;
    if they cannot be read (as in a zip), it is a mark, and no import
    fails.
    """
    assert len(parsing.CODE_DIGEST) == 16 and parsing._codeDigest() == parsing.CODE_DIGEST

    def unreadable(*args, **kwargs):
        raise PermissionError("no")

    monkeypatch.setattr("builtins.open", unreadable)
    assert parsing._codeDigest() == "unreadable"
