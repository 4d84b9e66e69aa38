"""
Courier's C{courierpop3dsizelist}, read for the UIDLs Courier's POP3 server
(C{courierpop3d}) showed (see L{popsrv.store.maildir.olduids}).

Courier's pop3d keeps, in the Maildir, a header line and one line per
message (read here as Courier-IMAP 5.0 reads it, in C{pop3dserver.c}, and
as its earlier versions did):

    - version 3 (Courier-IMAP 5): C{/3 <next uid> <uidvalidity>}, and
      C{<file name> <size> <uid>:<uidvalidity>:<utf8>};
    - version 2: C{/2 <next uid> <uidvalidity>}, and C{<file name> <size>
      <uid>:<uidvalidity>};
    - version 1: C{/1 <next uid>}, and C{<file name> <size> <uid>};
    - version 0 (before 2003), no header: C{<file name> <size>}.

The file name (with its flags) is what precedes the last two spaces.  The
UIDL of a message is C{UID<uid>-<uidvalidity>}, C{UID<uid>} without a
UIDVALIDITY (or with 0), and, for uid 0 (version 0, and messages kept since
then), its base name with every octet outside 0x21 to 0x7E and C{'}, C{"}
and C{+} written C{+XX} (upper-case hexadecimal).  Courier numbers messages
by the number their name starts with, then by name (as C{strcmp} of C{char}s
does, which are signed).

Courier-IMAP's other file, C{courierimapuiddb}, holds IMAP UIDs, which
Courier's pop3d never used: it is not read.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator, List, Tuple

from popsrv.store.maildir.olduids import OldUids, Tally, fileLines

__all__ = ["COURIER_SIZELIST", "MAX_LINE", "readSizelist"]

COURIER_SIZELIST = "courierpop3dsizelist"
# Longer lines are not Courier's (which cuts its lines at 2 KiB).
MAX_LINE = 4096
_LEADING_NUMBER = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_ESCAPED = frozenset(b"'\"+")
# Maps octets so that comparing the results compares signed chars.
_SIGNED = bytes((octet + 128) % 256 for octet in range(256))


def _encodedName(base: bytes) -> bytes:
    """The UIDL of uid 0: the base name with unusual octets as C{+XX}."""
    return b"".join(
        b"+%02X" % octet if octet < 0x21 or octet > 0x7E or octet in _ESCAPED else bytes((octet,))
        for octet in base
    )


def _courierOrder(name: bytes) -> Tuple[int, bytes]:
    """
    Where Courier's pop3d numbers a message of this file name: by the
    number it starts with (as C{atol} reads it), then by its octets up to
    the first colon, compared as signed chars (a name that ends first comes
    before any octet but those from 0x80).
    """
    match = _LEADING_NUMBER.match(name)
    number = int(match.group(1)) if match else 0
    base, colon, _ = name.partition(b":")
    return number, (base + colon).translate(_SIGNED) + b"\x80"


def _header(line: bytes) -> Tuple[int, int]:
    """
    The version and UIDVALIDITY of a header line.

    @raise ValueError: why the file cannot be used.
    """
    fields = line[1:].split()
    if not fields or not all(field.isdigit() for field in fields[:3]):
        raise ValueError("its header is not '/<version> <next uid> <uidvalidity>'")
    version = int(fields[0])
    if version not in (1, 2, 3) or (version > 1 and len(fields) < 3):
        raise ValueError(f"its version {fields[0][:10]!r} header is not one of versions 1 to 3")
    return version, int(fields[2]) if len(fields) > 2 else 0


def _record(line: bytes, version: int) -> Tuple[bytes, bytes]:
    """
    The file name and UIDL of a record line.

    @raise ValueError: why the line cannot be used.
    """
    parts = line.rsplit(b" ", 1 if version == 0 else 2)
    if len(parts) < (2 if version == 0 else 3):
        raise ValueError("not '<file name> <size> <uid>:<uidvalidity>'")
    name, size, ids = (parts[0], parts[1], b"0") if version == 0 else parts
    numbers = ids.split(b":")
    if not size.isdigit() or len(numbers) > 3 or not all(number.isdigit() for number in numbers):
        raise ValueError(f"{(size + b' ' + ids)[:40]!r} is not '<size> <uid>:<uidvalidity>'")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise ValueError("no usable file name")
    uid = int(numbers[0])
    validity = int(numbers[1]) if len(numbers) > 1 else 0
    base = name.partition(b":")[0]
    if uid == 0:
        return name, _encodedName(base)
    return name, (b"UID%d-%d" % (uid, validity)) if validity else (b"UID%d" % uid)


def readSizelist(data: bytes, pause: Callable[[], None] = lambda: None) -> OldUids:
    """
    Read a C{courierpop3dsizelist} for the UIDLs Courier showed.

    @param data: the file's content.
    @param pause: called now and then (to let other threads run).
    @return: its UIDLs; a file whose header cannot be used is refused
        whole (L{OldUids.refused} says why).
    """
    version = 0
    if data.startswith(b"/"):
        try:
            version, _ = _header(data[:min(MAX_LINE, len(data))].partition(b"\n")[0])
        except ValueError as error:
            return OldUids(COURIER_SIZELIST, refused=str(error))
    skipped = Tally("uidlist-lines-skipped", "lines not used")
    records: List[Tuple[Tuple[int, bytes], bytes, bytes, int]] = []
    for number, line in fileLines(data, MAX_LINE, pause):
        if number == 1 and version:
            continue
        if line is None:
            skipped.add(f"line {number}: longer than {MAX_LINE} octets")
            continue
        if not line:
            continue
        try:
            name, uidl = _record(line, version)
        except ValueError as error:
            skipped.add(f"line {number}: {error}")
            continue
        records.append((_courierOrder(name), name, uidl, number))
    records.sort()

    def entries() -> Iterator[Tuple[str, bytes, str]]:
        for _, name, uidl, number in records:
            yield name.decode("utf-8", "surrogateescape"), uidl, f"line {number}"

    return OldUids.build(COURIER_SIZELIST, entries(), skipped.note(), pause)
