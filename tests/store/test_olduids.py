"""
Tests of the readers of other servers' UIDL files (L{popsrv.store.maildir.dovecot},
L{popsrv.store.maildir.courier}) and of serving a snapshot with what they
say (L{popsrv.store.maildir.olduids}): the UIDLs each server showed, and,
whatever a file holds (a Maildir's owner can write anything in it), never
an exception, never a UIDL POP3 does not allow, never two messages with one
uid.
"""

from __future__ import annotations

import array
import re
from typing import Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsrv.messages import MessageList
from popsrv.store.maildir.courier import readSizelist
from popsrv.store.maildir.dovecot import readUidlist
from popsrv.store.maildir.listing import CurListing, hashedUid
from popsrv.store.maildir.olduids import OldUids
from popsrv.store.uidlformat import DEFAULT_UIDL_FORMAT, parseUidlFormat

DEFAULT = parseUidlFormat(DEFAULT_UIDL_FORMAT)
UIDL = re.compile(r"[\x21-\x7e]{1,70}")


def uidls(oldUids: OldUids, names: List[str]) -> Dict[str, str]:
    """
    The UIDL each named message is served with, when these are the
    messages of C{cur/}.
    """
    listing = CurListing()
    listing.update([f"{name},W=10:2," for name in names], lambda name: None)
    served, fileNames, _, _ = oldUids.serve(listing.messages, listing.fileNames)
    return {fileNames[info.uid].partition(",W=")[0]: info.uid for info in served}


def notes(oldUids: OldUids) -> Dict[str, List[str]]:
    """The examples of each note, by event."""
    return {note.event: list(note.examples) for note in oldUids.notes}


# dovecot-uidlist


VERSION3 = (
    b"3 V1796589488 N6 G42706d17b0c7156b0830000083ecc375\n"
    b"1 W23 :1700000001.M1P1.host,S=20\n"
    b"2 :1700000002.M2P2.host\n"
    b"3 Pmigrated-3 GA0 :1700000003.M3P3.host\n"
    b"4 P :1700000004.M4P4.host,S=20,W=23\n"
    b"5 GA5 :1700000005.M5P5.host\n"
)
NAMES = [f"170000000{n}.M{n}P{n}.host" for n in range(1, 6)]


def test_dovecotVersion3() -> None:
    """
    Records are served as Dovecot's pop3 shows them: the format expanded,
    a P value instead, an empty P as the base name; messages are matched by
    name without size fields.
    """
    served = uidls(readUidlist(VERSION3, DEFAULT), NAMES)
    assert served == {
        NAMES[0]: "000000016b15c7b0",
        NAMES[1]: "000000026b15c7b0",
        NAMES[2]: "migrated-3",
        NAMES[3]: "1700000004.M4P4.host,S=20,W=23",
        NAMES[4]: "000000056b15c7b0",
    }


def test_dovecotFilenameAndGuid() -> None:
    """%f is the base name the uidlist gives (with its size fields), %g the G value or that name."""
    served = uidls(readUidlist(VERSION3, parseUidlFormat("%g/%f")), NAMES)
    assert served[NAMES[0]] == "1700000001.M1P1.host,S=20/1700000001.M1P1.host,S=20"
    assert served[NAMES[4]] == "A5/1700000005.M5P5.host"


def test_dovecotVersion1() -> None:
    """Version 1 (Dovecot 1.0): 'uid name' records."""
    data = b"1 1796589488 3\n1 1700000001.M1P1.host\n2 1700000002.M2P2.host:2,S\n"
    served = uidls(readUidlist(data, parseUidlFormat("%v.%u")), NAMES[:2])
    assert served == {NAMES[0]: "1796589488.1", NAMES[1]: "1796589488.2"}


def test_dovecotOrder() -> None:
    """Messages with an O value come first, by it; then the others, by UID; then new messages."""
    data = (
        b"3 V7 N9\n1 :1700000001.M1P1.host\n2 O9 :1700000002.M2P2.host\n"
        b"3 O1 :1700000003.M3P3.host\n4 Ox :1700000004.M4P4.host\n"
    )
    listing = CurListing()
    listing.update([f"{name},W=10:2," for name in NAMES], lambda name: None)
    served, _, _, kept = readUidlist(data, parseUidlFormat("%u")).serve(listing.messages, listing.fileNames)
    assert [info.uid for info in served] == ["3", "2", "1", "4", "1700000005.M5P5.host"]
    assert kept == 4


@pytest.mark.parametrize(
    "header, why",
    [
        (b"", "version"),
        (b"3", "no usable UIDVALIDITY"),
        (b"3 N5", "no usable UIDVALIDITY"),
        (b"3 V0 N5", "no usable UIDVALIDITY"),
        (b"3 Vx N5", "no usable UIDVALIDITY"),
        (b"3 V5 N4294967296", "no usable UIDVALIDITY"),
        (b"2 5 6", "is not 1 or 3"),
        (b"1 5", "version 1 header"),
        (b"1 -5 6", "version 1 header"),
        (b"\xff\xfe garbage", "is not 1 or 3"),
        (b"3 " + b"V1 " * 100_000, "no usable UIDVALIDITY"),
    ],
)
def test_dovecotUnusableHeaderRefusesTheFile(header: bytes, why: str) -> None:
    """A file whose header cannot be used is refused whole, saying why."""
    oldUids = readUidlist(header + b"\n1 :1700000001.M1P1.host\n", DEFAULT)
    assert oldUids.refused is not None and why in oldUids.refused
    assert uidls(oldUids, NAMES[:1]) == {NAMES[0]: NAMES[0]}


def test_dovecotFaultyLinesAreSkipped() -> None:
    """
    Lines that are not records (uid 0, not a number, no base name, a / or
    .. in it, a duplicate or lower UID, megabytes long) are skipped and
    noted; the others are used.
    """
    data = b"".join(
        [
            b"3 V7 N99\n",
            b"0 :1700000009.M9P9.host\n",
            b"x1 :1700000009.M9P9.host\n",
            b"-2 :1700000009.M9P9.host\n",
            b"1 :1700000001.M1P1.host\n",
            b"2 :../../etc/passwd\n",
            b"3 :..\n",
            b"4 :\n",
            b"5 no colon\n",
            b"6 :a/b\n",
            b"1 :1700000002.M2P2.host\n",
            b"7 :" + b"x" * 3_000_000 + b"\n",
            b"\n",
            b"8 :1700000003.M3P3.host\n",
            b"99999999999 :1700000004.M4P4.host\n",
        ]
    )
    oldUids = readUidlist(data, parseUidlFormat("%u"))
    assert uidls(oldUids, NAMES[:4]) == {NAMES[0]: "1", NAMES[1]: NAMES[1], NAMES[2]: "8", NAMES[3]: NAMES[3]}
    skipped = notes(oldUids)["uidlist-lines-skipped"]
    assert len(skipped) == 11
    assert "line 12: longer than 4096 octets" in skipped
    assert "line 11: UID 1 is not above the UID before it (1)" in skipped


def test_dovecotUnusableOrDuplicateUidlsAreNotUsed() -> None:
    """
    A UIDL that is not 1 to 70 printable octets, or one an earlier message
    has, is not used: those messages get popsrv's own uid, and it is noted.
    """
    data = (
        b"3 V7 N9\n1 P\xe9t\xe9 :1700000001.M1P1.host\n2 Pa\x01b :1700000002.M2P2.host\n"
        b"3 P" + b"x" * 71 + b" :1700000003.M3P3.host\n4 Psame :1700000004.M4P4.host\n"
        b"5 Psame :1700000005.M5P5.host\n"
    )
    oldUids = readUidlist(data, DEFAULT)
    served = uidls(oldUids, NAMES)
    assert served == {NAMES[0]: NAMES[0], NAMES[1]: NAMES[1], NAMES[2]: NAMES[2], NAMES[3]: "same", NAMES[4]: NAMES[4]}
    refused = notes(oldUids)["uidl-refused"]
    assert len(refused) == 4 and "uid 5: same is the UIDL of uid 4 already" in refused


def test_dovecotLongFormatResultFallsBack() -> None:
    """A format that makes a UIDL over 70 octets (a long %f) falls back for that message."""
    long = "1700000001.M1P1." + "h" * 80
    data = b"3 V7 N9\n1 :" + long.encode() + b"\n2 :1700000002.M2P2.host\n"
    served = uidls(readUidlist(data, parseUidlFormat("%f")), [long, NAMES[1]])
    assert served == {long: hashedUid(long), NAMES[1]: NAMES[1]}


# courierpop3dsizelist


COURIER = (
    b"/3 5 1796589511\n"
    b"1700000001.M1P1.host:2, 23 1:1796589511:0\n"
    b"1700000002.M2P2.host:2,S 23 2:1796589511:1\n"
    b"1700000003.M3P3.host,S=20 23 3:0:0\n"
    b"1700000004.M4P4.host 23 0:1796589511:0\n"
)


def test_courierVersion3() -> None:
    """UID<n>-<uidv>, UID<n> without a UIDVALIDITY, the encoded name for uid 0."""
    served = uidls(readSizelist(COURIER), NAMES[:4])
    assert served == {
        NAMES[0]: "UID1-1796589511",
        NAMES[1]: "UID2-1796589511",
        NAMES[2]: "UID3",
        NAMES[3]: "1700000004.M4P4.host",
    }


@pytest.mark.parametrize(
    "data",
    [
        b"/2 3 99\n1700000001.M1P1.host 23 1:99\n1700000002.M2P2.host:2,S 23 2:99\n",
        b"/1 3\n1700000001.M1P1.host 23 1\n1700000002.M2P2.host:2,S 23 2\n",
        b"1700000001.M1P1.host 23\n1700000002.M2P2.host:2,S 23\n",
    ],
)
def test_courierEarlierVersions(data: bytes) -> None:
    """Versions 2, 1 and 0 (no header): what Courier's pop3d of their time showed."""
    version = 0 if not data.startswith(b"/") else int(data[1:2])
    expected = {
        2: ["UID1-99", "UID2-99"],
        1: ["UID1", "UID2"],
        0: NAMES[:2],
    }[version]
    assert list(uidls(readSizelist(data), NAMES[:2]).values()) == expected


def test_courierEncodedName() -> None:
    """The UIDL of uid 0 is the base name with ', ", + and octets outside 0x21..0x7E as +XX."""
    data = b"/2 3 9\n17.a b'c\"d+e\xc3\xa9f:2,S 23 0:9\n"
    served = readSizelist(data).serve
    listing = CurListing()
    name = "17.a b'c\"d+e\u00e9f,W=23:2,S"
    listing.update([name], lambda name: None)
    snapshot, _, _, _ = served(listing.messages, listing.fileNames)
    assert [info.uid for info in snapshot] == ["17.a+20b+27c+22d+2Be+C3+A9f"]


def test_courierOrder() -> None:
    """Courier numbers by the leading number, then by name as signed chars (not by microseconds)."""
    names = ["5.M10P1.h", "5.M9P1.h", "4.M99P1.h", "5.M9P1.h\u00e9", "5.M9P1.h."]
    data = b"/3 9 9\n" + b"".join(b"%s 1 %d:9:0\n" % (name.encode(), n) for n, name in enumerate(names, 1))
    listing = CurListing()
    listing.update([f"{name},W=1:2," for name in names], lambda name: None)
    served, _, _, _ = readSizelist(data).serve(listing.messages, listing.fileNames)
    assert [info.uid for info in served] == ["UID3-9", "UID1-9", "UID4-9", "UID2-9", "UID5-9"]


@pytest.mark.parametrize(
    "data, why",
    [
        (b"/4 5 6\nx 1 1:6\n", "not one of versions 1 to 3"),
        (b"/x\nx 1 1:6\n", "header is not"),
        (b"/\n", "header is not"),
        (b"/3 " + b"9" * 5000 + b"\n", "header is not"),
    ],
)
def test_courierUnusableHeader(data: bytes, why: str) -> None:
    """A header Courier would not read refuses the file."""
    oldUids = readSizelist(data)
    assert oldUids.refused is not None and why in oldUids.refused


def test_courierFaultyLines() -> None:
    """Lines that are not records are skipped and noted."""
    data = (
        b"/3 9 9\nnospace\n1700000001.M1P1.host 23 x:9:0\n1700000001.M1P1.host -1 1:9:0\n"
        b"../x 23 1:9:0\n 23 1:9:0\n1700000001.M1P1.host 23 1:9:0:7\n1700000002.M2P2.host 23 2:9:0\n"
    )
    oldUids = readSizelist(data)
    assert uidls(oldUids, NAMES[:2]) == {NAMES[0]: NAMES[0], NAMES[1]: "UID2-9"}
    assert len(notes(oldUids)["uidlist-lines-skipped"]) == 6


# Serving a snapshot


def test_newMessageNamedLikeAnOldUidlGetsAHash() -> None:
    """
    A message the file does not name whose own uid is one the file gives
    (a file named like an old UIDL) gets a hash, whether the message with
    that UIDL is still there or not; the old message keeps its UIDL.
    """
    data = b"3 V7 N9\n1 Pevil :1700000001.M1P1.host\n2 Pgone :1700000002.M2P2.host\n"
    oldUids = readUidlist(data, DEFAULT)
    served = uidls(oldUids, [NAMES[0], "evil", "gone"])
    assert served[NAMES[0]] == "evil"
    assert served["evil"] == hashedUid("evil\x001")
    assert served["gone"] == hashedUid("gone\x001")
    listing = CurListing()
    listing.update(["evil,W=1:2,"], lambda name: None)
    _, _, problems, _ = oldUids.serve(listing.messages, listing.fileNames)
    assert [(note.event, note.examples) for note in problems] == [("uid-collision", ("evil,W=1:2,",))]


def test_hashOfACollidingNameIsNeverAnOldUidl() -> None:
    """A file may even give the hash a colliding name would get: the next one is taken."""
    first = hashedUid("evil\x001")
    data = b"3 V7 N9\n1 Pevil :1700000001.M1P1.host\n2 P%s :1700000002.M2P2.host\n" % first.encode()
    served = uidls(readUidlist(data, DEFAULT), [NAMES[0], NAMES[1], "evil"])
    assert served["evil"] == hashedUid("evil\x002")


def test_twoFilesOfOneRecordNameKeepOneUidl() -> None:
    """Two messages whose names differ only in size fields: one keeps the old UIDL, the other gets its own."""
    data = b"3 V7 N9\n1 Pold :1700000001.M1P1.host\n"
    listing = CurListing()
    listing.update(["1700000001.M1P1.host,S=1,W=1:2,", "1700000001.M1P1.host,S=2,W=2:2,"], lambda name: None)
    served, _, problems, kept = readUidlist(data, DEFAULT).serve(listing.messages, listing.fileNames)
    assert kept == 1 and served[0].uid == "old"
    assert len({info.uid for info in served}) == 2
    assert [note.event for note in problems] == ["uid-collision"]


_recordNames = st.sampled_from(["1.M1P1.h", "2.M2P2.h", "3.M3P3.h", "1.M1P1.h,S=5", "evil", "..", "a/b", "x y"])
_uidlText = st.one_of(
    st.sampled_from([b"evil", b"1.M1P1.h", b"same", b"", b"x y", b"\xff"]),
    st.binary(min_size=0, max_size=75),
)
_lines = st.one_of(
    st.builds(
        lambda uid, p, o, name: b"%d%s%s :%s" % (uid, b" P" + p if p is not None else b"", o, name.encode()),
        st.integers(0, 9), st.none() | _uidlText, st.sampled_from([b"", b" O1", b" O0", b" Ox"]), _recordNames,
    ),
    st.binary(max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([b"3 V7 N9", b"1 7 9", b"3 V1"]),
    st.lists(_lines, max_size=12),
    st.sets(st.sampled_from(["1.M1P1.h", "2.M2P2.h", "4.M4P4.h", "evil", "same", "x"]), max_size=6),
    st.sampled_from(["%u", "%f", "%g", "%08Xu%08Xv", "%.2f"]),
)
def test_anyUidlistServesUniqueUsableUids(header: bytes, lines: List[bytes], names: set, text: str) -> None:
    """
    Whatever a dovecot-uidlist holds, and whatever the Maildir's names,
    serving never fails, every message keeps its size and file, and every
    uid is unique and one POP3 allows.
    """
    oldUids = readUidlist(b"\n".join([header, *lines]), parseUidlFormat(text))
    check(oldUids, sorted(names))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([b"/3 9 9\n", b"/2 9 9\n", b"/1 9\n", b""]),
    st.lists(
        st.one_of(
            st.builds(
                lambda name, n, v: b"%s 23 %d:%d:0" % (name.encode(), n, v),
                _recordNames, st.integers(0, 3), st.integers(0, 2),
            ),
            st.binary(max_size=30),
        ),
        max_size=12,
    ),
    st.sets(st.sampled_from(["1.M1P1.h", "2.M2P2.h", "UID1-1", "evil", "x"]), max_size=5),
)
def test_anySizelistServesUniqueUsableUids(header: bytes, lines: List[bytes], names: set) -> None:
    """The same for whatever a courierpop3dsizelist holds."""
    check(readSizelist(header + b"\n".join(lines)), sorted(names))


def check(oldUids: OldUids, names: List[str]) -> None:
    """Serve C{names} with C{oldUids}; check what must always hold."""
    listing = CurListing()
    listing.update([f"{name},W={len(name)}:2," for name in names], lambda name: None)
    served, fileNames, _, kept = oldUids.serve(listing.messages, listing.fileNames)
    uids = [info.uid for info in served]
    assert len(set(uids)) == len(uids) == len(names)
    assert all(UIDL.fullmatch(uid) for uid in uids)
    assert sorted(fileNames.values()) == sorted(listing.fileNames.values())
    for info in served:
        assert info.size == len(fileNames[info.uid].partition(",W=")[0])
    assert kept is not None and 0 <= kept <= len(names)


def test_sizesAndSeenFlagsFollowTheirMessages() -> None:
    """Reordering keeps each message's size and seen flag with it."""
    data = b"3 V7 N9\n1 O2 :b\n2 O1 :c\n"
    messages = MessageList(["a", "b", "c"], array.array("q", [1, 2, 3]), bytearray([0, 1, 0]))
    served, names, _, _ = readUidlist(data, parseUidlFormat("%u")).serve(messages, {"a": "a", "b": "b", "c": "c"})
    assert [(info.uid, info.size, info.seen, names[info.uid]) for info in served] == [
        ("2", 3, False, "c"),
        ("1", 2, True, "b"),
        ("a", 1, False, "a"),
    ]


def entries(*pairs: Tuple[str, bytes]):
    return [(name, uidl, f"entry {n}") for n, (name, uidl) in enumerate(pairs)]


def test_buildKeepsTheLaterOfTwoEntriesOfOneName() -> None:
    """As in Dovecot, a later entry of a name replaces an earlier one; both UIDLs stay taken."""
    oldUids = OldUids.build("f", entries(("a", b"one"), ("a,S=3", b"two")))
    assert uidls(oldUids, ["a", "one"]) == {"a": "two", "one": hashedUid("one\x001")}
