"""
Tests of the parsed C{cur/} listings (L{popsrv.store.maildir.listing}): a listing
brought up to date from an earlier one must always equal a listing made from
nothing, whatever changed in between, and the Maildir backend must give the
same snapshots with and without the listings it keeps.
"""

from __future__ import annotations

import gc
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsrv.messages import MessageInfo, MessageList
from popsrv.store.maildir import MaildirMaildrop, deliver, parsing
from popsrv.store.maildir import listing as listingModule
from popsrv.store.maildir import maildrop as maildir
from popsrv.store.maildir.directory import Directory
from popsrv.store.maildir.listing import CurListing, ListingCache, orderKey


def noSize(name: str):
    raise AssertionError(f"{name} records no size")


def namesInOrder(listing: CurListing) -> list:
    """
    The file names of a listing's messages, in POP3 order.
    """
    return [listing.fileNames[info.uid] for info in listing.messages]


def fresh(names) -> CurListing:
    listing = CurListing()
    listing.update(list(names), noSize)
    return listing


def snapshotOf(listing: CurListing):
    return list(listing.messages), dict(listing.fileNames)


# Names as MDAs write them, some with colliding uids (alike but for their
# size fields or flags), some unordered by time, some not Maildir-like.
_seconds = st.integers(1_600_000_000, 1_600_000_003)
_usualNames = st.one_of(
    st.builds(
        lambda t, u, q, w, flags: f"{t}.M{u}P7Q{q}.host,S={w},W={w + 1}:2,{flags}",
        _seconds, st.integers(0, 999_999), st.integers(0, 3), st.integers(1, 3), st.sampled_from(["", "S", "FS"]),
    ),
    st.builds(lambda t, w: f"{t}.odd,W={w}", _seconds, st.integers(1, 3)),
    st.builds(lambda t, w: f"{t}.V801I{w}.host,W={w}:2,S", _seconds, st.integers(1, 3)),
)
_names = st.one_of(
    _usualNames,
    st.builds(lambda w: f"not-a-time-{'x' * 80},W={w}:2,", st.integers(1, 2)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sets(_names, max_size=12), min_size=1, max_size=5), st.sampled_from([0, 8, 1024]))
def test_anUpdatedListingEqualsAFreshOne(generations, keptNameSet) -> None:
    """
    Whatever names appear and vanish between updates, the updated listing
    is the one parsed from nothing, whether it kept its parsed names or
    not.
    """
    listingModule.KEPT_NAME_SET, kept = keptNameSet, listingModule.KEPT_NAME_SET
    try:
        updatedEqualsFresh(generations)
    finally:
        listingModule.KEPT_NAME_SET = kept


def updatedEqualsFresh(generations) -> None:
    listing = CurListing()
    for names in generations:
        listing.update(list(names), noSize)
        assert snapshotOf(listing) == snapshotOf(fresh(names))
        assert len({info.uid for info in listing.messages}) == len(names)


# Pieces of hostile and unusual names: digits with leading zeros, numbers
# too big for any clock, size fields in odd places, printable and
# unprintable, non-ASCII digits and letters, bytes that are not UTF-8.
_pieces = st.sampled_from([
    "0", "00", "7", "1600000000", "9" * 30, ".M", ".M0", ".M012", "P7", ".host", ",S=", ",W=", "12", ",", ":",
    ":2,", "S", "F", "x" * 40, "\x7f", " ", "\u0663", "\udcff", "\n", "=", "W", "\u00e9", "\x01",
])
_anyNames = st.one_of(
    st.lists(_pieces, min_size=1, max_size=12).map("".join),
    _names,
    st.builds(
        lambda zeros, t, u, host, sizes, info: f"{'0' * zeros[0]}{t}.M{'0' * zeros[1]}{u}P1.{host}{sizes}{info}",
        st.tuples(st.integers(0, 3), st.integers(0, 3)), st.integers(0, 10**12), st.integers(0, 10**7),
        st.sampled_from(["h", "x" * 70, "a:b", "", "M7"]),
        st.sampled_from([",S=3,W=4", ",W=4", ",W=04", ",S=3", ",W=4,S=3", ",W=4,W=5", ",W=\u0663"]),
        st.sampled_from(["", ":", ":2,", ":2,S", ":2,FS", ":2,F", ":2,RT", ":1,S", ":2,S:x", "\n:2,S"]),
    ),
)


@settings(max_examples=2000, deadline=None)
@given(_anyNames)
def test_theUsualNameIsParsedAsTheGeneralRulesParseIt(name: str) -> None:
    """
    Parsed by the one match of the usual name or by the general rules, any
    name gives the same sort key, base name, uid, size and seen flag.
    """
    assert parsing.parseName(name) == parsing.parseAnyName(name)


def columnsOf(entries) -> tuple:
    return (
        [entry[0] for entry in entries], [entry[5] for entry in entries], [entry[2] for entry in entries],
        [entry[3] for entry in entries], [entry[4] for entry in entries],
    )


def parsedTogether(names) -> tuple:
    columns = parsing.Columns()
    unsized = parsing.parseColumns(names, columns)
    together = (list(columns.times), columns.names, columns.uids, list(columns.sizes), [bool(s) for s in columns.seen])
    return together, unsized


@settings(max_examples=500, deadline=None)
@given(st.lists(_anyNames, max_size=20))
def test_namesParsedTogetherAreParsedAsOneByOne(names) -> None:
    """
    Names parsed together, column by column, give what each gives alone;
    those that record no size are handed back.
    """
    alone = [parsing.parseName(name) for name in names]
    together, unsized = parsedTogether(names)
    assert together == columnsOf([entry for entry in alone if entry is not None])
    assert unsized == [name for name, entry in zip(names, alone) if entry is None]


@settings(max_examples=200, deadline=None)
@given(st.lists(_usualNames, min_size=1, max_size=20))
def test_usualNamesAreParsedColumnByColumn(names) -> None:
    """
    A batch of usual names is parsed without a step per name (so the test
    above compares two different ways).
    """
    parse = parsing.parseName
    parsing.parseName = lambda name: pytest.fail(f"{name} parsed one by one")  # type: ignore[assignment]
    try:
        together, unsized = parsedTogether(names)
    finally:
        parsing.parseName = parse
    assert unsized == []
    assert together == columnsOf([parse(name) for name in names])


@pytest.mark.parametrize("name", [
    "1600000000.M7P1.h,S=3,W=4:2,S", "0001600000000.M0012P1.h,W=4", "x.y,S=1,W=2:2,", "1.M,W=4:", "7,W=7",
])
def test_usualNamesTakeTheQuickWay(name: str, monkeypatch) -> None:
    """
    The names delivery agents and popsrv write are parsed by one match (so
    the test above compares two different ways), others are not.
    """
    monkeypatch.setattr(parsing, "parseAnyName", lambda name: pytest.fail(f"{name} parsed slowly"))
    assert parsing.parseName(name) is not None


@pytest.mark.parametrize(
    "name", ["1.a,W=1,S=2", "x" * 71 + ",W=1", ",W=1", "1.\u00e9,W=1", "1.a b,W=1", "1.a,W=\u0663"]
)
def test_otherNamesFollowTheGeneralRules(name: str, monkeypatch) -> None:
    """
    A name the one match does not cover (size fields in another order, a
    unique part too long or empty or not printable ASCII, digits that are
    not ASCII) is parsed by the general rules.
    """
    slowly = []
    parseAnyName = parsing.parseAnyName
    monkeypatch.setattr(parsing, "parseAnyName", lambda name: slowly.append(name) or parseAnyName(name))
    parsing.parseName(name)
    assert slowly == [name]


@settings(max_examples=300, deadline=None)
@given(st.lists(_anyNames, unique=True, max_size=30))
def test_theSortKeySortsAsTheOrderKey(names) -> None:
    """
    Names sort by their sort keys as by their order keys (delivery time,
    microseconds, unique part, base), then by the name itself; their
    delivery times (L{timeKey}) never put them in another order.
    """
    usable = [name for name in names if parsing.parseName(name) is not None]
    byOrderKey = sorted(usable, key=lambda name: (orderKey(name), name))
    assert sorted(usable, key=parsing.sortKey) == byOrderKey
    byTime = sorted(usable, key=lambda name: (parsing.parseName(name)[0], parsing.sortKey(name)))  # type: ignore[index]
    assert byTime == byOrderKey


def test_parsingIsAccountedInSteps() -> None:
    """
    An update accounts for the names it parses in steps of at most
    L{ACCOUNT_STEP}, every name once.
    """
    names = [f"{1_600_000_000 + n}.M1P1Q{n}.h,W=6:2," for n in range(1000)]
    counts: list = []
    CurListing().update(names, noSize, counts.append)
    assert sum(counts) == 1000
    assert max(counts) == listingModule.ACCOUNT_STEP


@pytest.fixture
def keepNames(monkeypatch):
    """
    Listings of any size keep their parsed names (as big ones do).
    """
    monkeypatch.setattr(listingModule, "KEPT_NAME_SET", 0)


def test_aSmallListingKeepsOnlyItsSnapshot() -> None:
    """
    A listing of fewer than KEPT_NAME_SET names keeps its snapshot but not
    its parsed names: the next update parses every name again, and gives
    what a fresh listing gives.
    """
    names = [f"{1_600_000_000 + n}.M1P1Q{n}.h,S=5,W=6:2," for n in range(50)]
    listing = fresh(names)
    assert len(listing) == 50 and not listing.isEmpty()
    assert listing._parsed.names == []
    parsed: list = []
    more = names[5:] + ["1700000000.M1P1Q9.h,W=9:2,"]
    listing.update(more, noSize, parsed.append)
    assert sum(parsed) == len(more)
    assert snapshotOf(listing) == snapshotOf(fresh(more))
    listing.update([], noSize)
    assert list(listing.messages) == [] and not listing.isEmpty()


def test_anUnchangedListingKeepsItsSnapshot(keepNames) -> None:
    """
    When no name changed, the update parses nothing and the snapshot is the
    very same list.
    """
    names = [f"{1_600_000_000 + n}.M1P1Q{n}.h,S=5,W=6:2," for n in range(50)]
    listing = fresh(names)
    before = listing.messages
    parsed = []
    listing.update(list(reversed(names)), noSize, parsed.append)
    assert listing.messages is before
    assert parsed == []


def test_onlyNewNamesAreParsed(keepNames) -> None:
    """
    After a delivery, only the new names are parsed, and the new message
    comes last.
    """
    names = [f"{1_600_000_000 + n}.M1P1Q{n}.h,W=6:2," for n in range(50)]
    listing = fresh(names)
    parsed = []
    listing.update(names + ["1700000000.M1P1Q9.h,W=9:2,"], noSize, parsed.append)
    assert parsed == [1]
    assert listing.messages[-1].uid == "1700000000.M1P1Q9.h"
    assert listing.messages[-1].size == 9


def test_namesWithoutASizeAreHandedToWithSize() -> None:
    """
    A name without C{,W=} is measured (renamed) through C{withSize}; a
    message gone meanwhile (L{None}) is left out.
    """
    listing = CurListing()
    listing.update(["1.a:2,", "2.b:2,"], lambda name: None if name == "2.b:2," else "1.a,W=4:2,")
    assert [(info.uid, info.size) for info in listing.messages] == [("1.a", 4)]
    assert listing.fileNames == {"1.a": "1.a,W=4:2,"}


def test_aMeasuredNameThatWasKnownIsListedOnce() -> None:
    """
    A name without C{,W=} that, measured, takes a name the listing knew
    (the file of that name vanished since) or a name listed as well (the
    rename replaced that file) is one message, not two.
    """
    listing = fresh(["1.a,S=1,W=2:2,", "2.b,W=1"])
    listing.update(["1.a,S=1:2,", "2.b,W=1"], lambda name: "1.a,S=1,W=2:2,")
    assert [(info.uid, info.size) for info in listing.messages] == [("1.a", 2), ("2.b", 1)]
    assert listing.fileNames == {"1.a": "1.a,S=1,W=2:2,", "2.b": "2.b,W=1"}
    listing = CurListing()
    listing.update(["1.a,S=1:2,", "1.a,S=1,W=2:2,"], lambda name: "1.a,S=1,W=2:2,")
    assert [(info.uid, info.size) for info in listing.messages] == [("1.a", 2)]


def test_theCacheKeepsListingsWithinItsCapacity() -> None:
    """
    L{ListingCache} keeps listings of at least C{minimum} messages, at most
    C{capacity} in all (each counting its messages plus one), dropping the
    least recently used.
    """
    cache = ListingCache(capacity=14, minimum=3)
    small, big, other = fresh(["1.a,W=1"]), fresh([f"{n}.a,W=1" for n in range(4)]), fresh(
        [f"{n}.b,W=1" for n in range(7)]
    )
    cache.give("small", small)
    cache.give("big", big)
    assert list(cache.keys()) == ["big"]
    assert cache.take("big") is big
    assert cache.take("big").isEmpty()
    cache.give("big", big)
    cache.give("other", other)
    assert list(cache.keys()) == ["big", "other"]
    cache.give("big2", fresh([f"{n}.c,W=1" for n in range(4)]))
    assert list(cache.keys()) == ["other", "big2"]


def test_emptyListingsCountTowardsTheCapacity() -> None:
    """
    However many empty Maildirs a process serves, the cache keeps at most
    C{capacity} listings.
    """
    cache = ListingCache(capacity=10)
    for n in range(100):
        cache.give(f"empty{n}", fresh([]))
    assert list(cache.keys()) == [f"empty{n}" for n in range(90, 100)]


@pytest.fixture
def keepEveryListing(monkeypatch):
    """
    Make the Maildir backend keep the listing of every Maildir, however
    small.
    """
    cache = ListingCache()
    monkeypatch.setattr(maildir, "LISTINGS", cache)
    return cache


def session(path):
    maildrop = MaildirMaildrop(str(path), "alice")
    maildrop.lock()
    try:
        return maildrop.listMessages(), dict(maildrop._files.names)
    finally:
        maildrop.release()


def coldSession(path, cache: ListingCache):
    cache.take(os.path.join(str(path), "cur"))
    return session(path)


def test_maildropSnapshotsWithAKeptListingEqualColdOnes(tmp_path, keepEveryListing) -> None:
    """
    Between sessions, mail is delivered, removed, flagged and renamed by
    other programs, and files that are not messages appear: the snapshot
    made with the kept listing is the one made without it.
    """
    box = tmp_path / "alice"
    for n in range(20):
        deliver(str(box), b"Subject: %d\n\nbody\n" % n)
    first = session(box)
    assert session(box) == first
    cur = box / "cur"
    names = sorted(os.listdir(cur))
    os.unlink(cur / names[3])
    os.rename(cur / names[5], cur / (names[5].split(":")[0] + ":2,FS"))
    deliver(str(box), b"Subject: late\n\nbody\n")
    (cur / "1000.foreign-without-size:2,").write_bytes(b"x\n")
    (cur / ".dotfile").write_bytes(b"x")
    os.mkdir(cur / "2000.a-directory,W=1:2,")
    os.symlink("/etc/passwd", cur / "3000.a-symlink,W=1:2,")
    warm = session(box)
    assert warm == coldSession(box, keepEveryListing)
    messages, _ = warm
    assert len(messages) == 20 - 1 + 1 + 1
    assert messages[0].uid == "1000.foreign-without-size"
    assert messages[0].size == 3


def test_aCommitIsSeenByTheNextSession(tmp_path, keepEveryListing) -> None:
    """
    Deletions and seen flags applied at the end of a session show in the
    next snapshot.
    """
    box = tmp_path / "alice"
    for n in range(5):
        deliver(str(box), b"Subject: %d\n\nbody\n" % n)
    maildrop = MaildirMaildrop(str(box), "alice")
    maildrop.lock()
    messages = maildrop.listMessages()
    maildrop.commit({messages[0].uid}, {messages[1].uid})
    maildrop.release()
    after, _ = session(box)
    assert [info.uid for info in after] == [info.uid for info in messages[1:]]
    assert after[0].seen and not any(info.seen for info in after[1:])
    assert session(box) == coldSession(box, keepEveryListing)


def settle(directory) -> None:
    """
    Date a directory's modification time back, as if it had not changed
    for a minute.
    """
    old = time.time() - 60
    os.utime(directory, (old, old))


def test_aSettledUnchangedCurIsNotListedAgain(tmp_path, keepEveryListing, monkeypatch) -> None:
    """
    Once C{cur/} has not changed for a while, a session whose listing was
    made after that change does not list it again while its modification
    time stays the same.
    """
    box = tmp_path / "alice"
    for n in range(3):
        deliver(str(box), b"Subject: %d\n\nbody\n" % n)
    session(box)
    settle(box / "cur")
    first = session(box)
    listed = countListings(monkeypatch)
    assert session(box) == first
    assert listed == []


def test_aChangeOfASettledCurIsSeen(tmp_path, keepEveryListing) -> None:
    """
    A change to a settled C{cur/} gives it a new modification time, and
    the next snapshot lists it again.
    """
    box = tmp_path / "alice"
    for n in range(3):
        deliver(str(box), b"Subject: %d\n\nbody\n" % n)
    session(box)
    settle(box / "cur")
    session(box)
    victim = sorted(os.listdir(box / "cur"))[1]
    os.unlink(box / "cur" / victim)
    messages, names = session(box)
    assert len(messages) == 2
    assert victim not in names.values()
    assert (messages, names) == coldSession(box, keepEveryListing)


def test_aFreshlyChangedCurIsListedEachTime(tmp_path, keepEveryListing, monkeypatch) -> None:
    """
    A listing made while C{cur/} changed only a moment ago is not trusted
    (a change within the same tick of the file system's clock would not
    show in the modification time): here a change whose modification time
    is put back to the old value is still seen.
    """
    box = tmp_path / "alice"
    for n in range(3):
        deliver(str(box), b"Subject: %d\n\nbody\n" % n)
    monkeypatch.setattr(maildir, "_nowNS", lambda: os.stat(box / "cur").st_mtime_ns + 1)
    session(box)
    before = os.stat(box / "cur")
    victim = sorted(os.listdir(box / "cur"))[0]
    os.unlink(box / "cur" / victim)
    os.utime(box / "cur", ns=(before.st_atime_ns, before.st_mtime_ns))
    messages, _ = session(box)
    assert len(messages) == 2


def countListings(monkeypatch) -> list:
    """
    Record each listing of a Maildir's C{cur/} from now on (the backend
    lists through the directory descriptors opened at lock time).
    """
    listed = []
    realListFiles = Directory.listFiles

    def listFiles(self, *args, **kwargs):
        if self.label == "cur":
            listed.append(self.label)
        return realListFiles(self, *args, **kwargs)

    monkeypatch.setattr(Directory, "listFiles", listFiles)
    return listed


def test_aThreadWaitsOutTheClockTickOfAFreshChange(tmp_path, keepEveryListing, monkeypatch) -> None:
    """
    Working in a thread, a login that just moved new mail to C{cur/} waits
    for the tick of the file system's clock to pass before listing it, so
    that the next session can trust the listing without listing again.
    """
    box = tmp_path / "alice"
    for n in range(3):
        deliver(str(box), b"Subject: %d\n\nbody\n" % n)
    maildrop = MaildirMaildrop(str(box), "alice", runner=lambda function, *args: function(*args))
    maildrop.lock()
    first = maildrop.listMessages()
    maildrop.release()
    listed = countListings(monkeypatch)
    assert session(box)[0] == first
    assert listed == []


@pytest.mark.parametrize("age, trusted", [(1, False), (3, True)])
def test_wholeSecondTimestampsAreTrustedAfterTwoSeconds(tmp_path, keepEveryListing, monkeypatch, age, trusted):
    """
    A modification time in whole seconds may come from a file system whose
    clock ticks once a second or two: a listing is trusted only if it began
    more than 2 s after it.
    """
    box = tmp_path / "alice"
    deliver(str(box), b"Subject: 1\n\nbody\n")
    session(box)
    whole = (time.time_ns() // 10**9 - age) * 10**9
    os.utime(box / "cur", ns=(whole, whole))
    session(box)
    listed = countListings(monkeypatch)
    session(box)
    assert (listed == []) is trusted


def test_aKeptListingCostsTheGarbageCollectorNothing() -> None:
    """
    However many messages a kept listing holds, the garbage collector
    tracks a handful of objects for it (a full collection visits every
    tracked object, and a server keeps listings of 100,000 messages).
    """
    names = [f"{1_600_000_000 + n}.M{n}P1Q1.host,S=10,W=11:2,{'S' if n % 3 else ''}" for n in range(5000)]
    fresh(names[:10])  # any first-use caches
    gc.collect()
    before = len(gc.get_objects())
    listing = fresh(names)
    # Tuples of untracked items are untracked at a collection they survive.
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 200
    assert len(listing.messages) == 5000


def test_messageListIsASequenceOfMessageInfo() -> None:
    """
    L{MessageList} holds messages by column and gives them back as
    L{MessageInfo}, with their total size and the last seen one.
    """
    infos = [MessageInfo("a", 10, True), MessageInfo("b", 20, False), MessageInfo("c", 5, True), MessageInfo("d", 1)]
    messages = MessageList.of(infos)
    assert len(messages) == 4
    assert messages[1] == MessageInfo("b", 20, False)
    assert messages[-1] == MessageInfo("d", 1, False)
    assert messages[1:3] == infos[1:3]
    assert list(messages) == infos
    assert messages == infos and messages == MessageList.of(infos)
    assert messages != MessageList.of(infos[:3])
    assert messages.totalSize() == 36
    assert messages.lastSeen() == 3
    assert MessageList.of([MessageInfo("x", 1)]).lastSeen() == 0
    with pytest.raises(IndexError):
        messages[4]


def test_sortingInStepsKeepsTheOrder(monkeypatch) -> None:
    """
    Sorted in runs and merged (as for a big first listing, or many new
    names at once), the names come out in the order one sort gives.
    """
    import random

    monkeypatch.setattr(parsing, "SORT_STEP", 4)
    rng = random.Random(7)
    names = [f"{1_600_000_000 + rng.randrange(50)}.M{rng.randrange(10**6)}P1Q{n}.h,W={n + 1}:2," for n in range(101)]
    pauses = []
    listing = CurListing()
    listing.update(list(names), noSize, pause=lambda: pauses.append(1))
    assert namesInOrder(listing) == sorted(names, key=orderKey)
    assert len(pauses) >= 101 // 4
    more = [f"{1_600_000_000 + rng.randrange(60)}.M{rng.randrange(10**6)}P2Q{n}.h,W=1:2," for n in range(37)]
    kept = names[10:]
    listing.update(kept + more, noSize)
    assert namesInOrder(listing) == sorted(kept + more, key=orderKey)


def test_aQuickListingOnTheReactorThreadNeverWaits(tmp_path, keepEveryListing, monkeypatch) -> None:
    """
    A small Maildir is listed at once on the calling (reactor) thread, even
    by a maildrop with a thread runner: right after a change to C{cur/}, it
    does not wait for the clock tick to pass.
    """
    box = tmp_path / "alice"
    for n in range(3):
        deliver(str(box), b"Subject: %d\\n\\nbody\\n" % n)
    threaded = lambda function, *args: function(*args)  # noqa: E731
    maildrop = MaildirMaildrop(str(box), "alice", runner=threaded)
    maildrop.lock()
    maildrop.listMessages()
    maildrop.release()
    name = sorted(os.listdir(box / "cur"))[0]
    os.rename(box / "cur" / name, box / "cur" / (name + "F"))
    waits = []
    monkeypatch.setattr(maildir.time, "sleep", lambda seconds: waits.append(seconds))
    maildrop = MaildirMaildrop(str(box), "alice", runner=threaded)
    maildrop.lock()
    assert len(maildrop.listMessages()) == 3
    maildrop.release()
    assert [seconds for seconds in waits if seconds > 0] == []


def hostileNames(n: int) -> list:
    return [
        "0" * 120 + ".M" + "0" * 110 + f",W={n},",
        "0" * 200 + ".M" + "1" * 200 + f"{n},S=1,W=1:2,S",
        "9" * 150 + ".M" + "0" * 150 + f"x{n},W=7",
        "0" * 240 + f"{n},W=,",
    ]


def test_hostileNamesAreParsedInLinearTime() -> None:
    """
    Names made of long runs of zeros and digits, which a user can put in
    cur/, are parsed at once: the usual name's expression never tries a
    part again at another length (before, each took a second or more,
    holding the GIL).
    """
    names = [name for n in range(5) for name in hostileNames(n)]
    started = time.perf_counter()
    listing = CurListing()
    listing.update(names, lambda name: None)
    assert time.perf_counter() - started < 2.0
    assert len(listing.messages) == sum(parsing.parseName(name) is not None for name in names)
    assert all(parsing.parseName(name) == parsing.parseAnyName(name) for name in names)


_tyingNames = st.builds(
    lambda t, u, rest, info: f"{t}.M{u}{rest}{info}",
    st.sampled_from(["7", "07", "999999999999", "1000000000000", "99999999999999999"]),
    st.sampled_from(["0", "1", "999999", "1000000", "0001", "12345678"]),
    st.sampled_from(["Pa,W=1", "Pb,S=2,W=1", "Pa,W=2", "P,W=1", ",W=1", "Pa"]),
    st.sampled_from(["", ":2,", ":2,S", ":1,x"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_tyingNames, _anyNames), unique=True, max_size=40), st.integers(0, 40))
def test_namesOfTheSameDeliveryTimeAreInTheOrderOfTheirSortKeys(names, kept) -> None:
    """
    Names whose delivery times tie, or pass a cap of L{timeKey} (seconds of
    13 digits or more, microseconds of 7), are listed in the order of their
    order keys then names, as others are: in a first listing, and when
    added to a kept one.
    """
    listing = CurListing()
    measured = lambda name: None  # noqa: E731
    listing.update(names[:kept], measured)
    listing.update(names, measured)
    usable = [name for name in names if parsing.parseName(name) is not None]
    expected = sorted(usable, key=lambda name: (orderKey(name), name))
    assert namesInOrder(listing) == expected
    assert namesInOrder(fresh(usable)) == expected


def test_aNameMadeToLookLikeAHashSharesNoUid() -> None:
    """
    Names alike but for their sizes get hashes for uids; a name whose
    unique part is made to be one of those hashes does not share it: every
    uid names its own file, the same in a first listing, in one kept and
    updated, and in one parsed partly by a helper.
    """
    from popsrv.store.maildir.parsing import hashedUid

    crafted = f"{hashedUid('1.x,S=1,W=5')},W=7"
    twice = f"{hashedUid(crafted.partition(',')[0])},W=8"
    names = ["1.x,S=1,W=5", "1.x,S=2,W=5", crafted, twice]
    listing = fresh(names)
    uids = [info.uid for info in listing.messages]
    assert len(set(uids)) == 4
    assert sorted(listing.fileNames.values()) == sorted(names)
    for name in names:
        kept = CurListing()
        kept.update([other for other in names if other != name], noSize)
        kept.update(list(reversed(names)), noSize)
        assert kept.fileNames == listing.fileNames


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=60), st.integers(0, 60), st.integers(1, 5))
def test_runsAreMergedInStepsAsOneSortMergesThem(times, split, step) -> None:
    """
    Two runs of indexes, each in the order of their times, merged a step
    at a time (however small), come out in the order of their times, each
    index once, pausing between steps.
    """
    split = min(split, len(times))
    first = sorted(range(split), key=times.__getitem__)
    second = sorted(range(split, len(times)), key=times.__getitem__)
    pauses = []
    original = parsing.SORT_STEP
    parsing.SORT_STEP = step
    try:
        merged = parsing.mergedInSteps(first, second, times, lambda: pauses.append(1))
    finally:
        parsing.SORT_STEP = original
    assert sorted(merged) == list(range(len(times)))
    assert [times[index] for index in merged] == sorted(times)
    if first and second:
        assert pauses


def test_aNameListedTwiceGetsUidsOfItsOwn() -> None:
    """
    A name listed twice (a directory read while renames went on) does not
    keep the listing from being made: every uid is unique.
    """
    names = ["1.x,S=1,W=5", "1.x,S=1,W=5", "1.x,S=2,W=5", "2.y,W=1"]
    listing = CurListing()
    listing.update(names, noSize)
    uids = [info.uid for info in listing.messages]
    assert len(uids) == len(set(uids)) == 4
