"""
Dovecot's C{dovecot-uidlist}, read for the UIDLs Dovecot's POP3 server
showed (see L{popsrv.store.maildir.olduids}).

The file (as Dovecot 2.3 writes and reads it) is a header line, then one
line per message in UID order:

    - version 3: C{3 V<uidvalidity> N<next uid> G<mailbox guid>} (other
      C{<letter><value>} fields may follow), and C{<uid> [<letter><value>
      ...] :<base name>}, where C{P<uidl>} is a UIDL saved for the message
      (by C{pop3_save_uidl}, or a migration), C{O<n>} its place in the POP3
      order and C{G<guid>} its GUID;
    - version 1 (Dovecot 1.0, and Courier-IMAP's C{courierimapuiddb}):
      C{1 <uidvalidity> <next uid>}, and C{<uid> <base name>}.

Dovecot's POP3 server shows a message's C{P} value if it has one (an empty
one meaning its base name), else its C{pop3_uidl_format} expanded
(L{popsrv.store.uidlformat}) with C{%u} its UID, C{%v} the UIDVALIDITY,
C{%f} its base name and C{%g} its GUID (its base name without one); and
numbers the messages with an C{O} value first, by that value, then the
others, by UID.

Dovecot treats a file with any faulty line as broken and writes a new one
(with new UIDs); here a faulty line is skipped, and logged, and the others
are used.  Nothing a line says is ever used as a path: base names only
name messages to look for among those listed in C{cur/}.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Tuple

from popsrv.store.maildir.olduids import OldUids, Tally, fileLines
from popsrv.store.uidlformat import UidlFormat

__all__ = ["DOVECOT_UIDLIST", "MAX_LINE", "readUidlist"]

DOVECOT_UIDLIST = "dovecot-uidlist"
# Longer lines are not Dovecot's (a base name is at most 255 octets).
MAX_LINE = 4096
# Where a message without an O value goes in Dovecot's POP3 order.
_NO_ORDER = 2**32 - 1
_LAST_UID = 2**32 - 2


def _decimal(text: bytes) -> Optional[int]:
    """A decimal number of digits only, or C{None}."""
    return int(text) if text.isdigit() and text.isascii() else None


def _header(line: bytes) -> Tuple[int, int]:
    """
    The version and UIDVALIDITY of a header line.

    @raise ValueError: why the file cannot be used.
    """
    version, _, rest = line.partition(b" ")
    fields = rest.split()
    if version == b"1":
        if len(fields) < 2 or _decimal(fields[0]) is None or _decimal(fields[1]) is None:
            raise ValueError("its version 1 header is not '1 <uidvalidity> <next uid>'")
        uidValidity, nextUid = int(fields[0]), int(fields[1])
    elif version == b"3":
        values: Dict[bytes, Optional[int]] = {}
        for field in fields:
            values[field[:1]] = _decimal(field[1:])
        uidValidity, nextUid = values.get(b"V") or 0, values.get(b"N") or 0
    else:
        raise ValueError(f"its version {version[:10]!r} is not 1 or 3")
    if not 0 < uidValidity < 2**32 or not 0 < nextUid < 2**32:
        raise ValueError("its header has no usable UIDVALIDITY and next UID")
    return int(version), uidValidity


def _record(line: bytes, version: int) -> Tuple[int, bytes, Dict[bytes, bytes]]:
    """
    The UID, base name and extension fields of a record line.

    @raise ValueError: why the line cannot be used.
    """
    if version == 3:
        head, colon, name = line.partition(b" :")
        if not colon:
            raise ValueError("no ' :' before the base name")
        uidText, *extensions = head.split(b" ")
    else:
        uidText, _, name = line.partition(b" ")
        name, extensions = name.lstrip(b" "), []
    uid = _decimal(uidText)
    if uid is None or not 0 < uid <= _LAST_UID:
        raise ValueError(f"{uidText[:20]!r} is not a UID")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise ValueError("no usable base name")
    fields: Dict[bytes, bytes] = {}
    for extension in extensions:
        if extension[:1].isupper():
            fields.setdefault(extension[:1], extension[1:])
    return uid, name, fields


def readUidlist(data: bytes, uidlFormat: UidlFormat, pause: Callable[[], None] = lambda: None) -> OldUids:
    """
    Read a C{dovecot-uidlist} for the UIDLs Dovecot showed with the
    C{pop3_uidl_format} C{uidlFormat}.

    @param data: the file's content.
    @param pause: called now and then (to let other threads run).
    @return: its UIDLs; a file whose header cannot be used is refused
        whole (L{OldUids.refused} says why).
    """
    try:
        version, uidValidity = _header(data[:MAX_LINE].partition(b"\n")[0])
    except ValueError as error:
        return OldUids(DOVECOT_UIDLIST, refused=str(error))
    skipped = Tally("uidlist-lines-skipped", "lines not used")
    # (POP3 order, UID, base name, P value, G value) of each message.
    records: List[Tuple[int, int, bytes, Optional[bytes], Optional[bytes]]] = []
    previous = 0
    for number, line in fileLines(data, MAX_LINE, pause):
        if number == 1:
            continue
        if line is None:
            skipped.add(f"line {number}: longer than {MAX_LINE} octets")
            continue
        if not line:
            continue
        try:
            uid, name, fields = _record(line, version)
        except ValueError as error:
            skipped.add(f"line {number}: {error}")
            continue
        if uid <= previous:
            skipped.add(f"line {number}: UID {uid} is not above the UID before it ({previous})")
            continue
        previous = uid
        # (An O value that is not a 64-bit number is no value, as in Dovecot.)
        order = _decimal(fields.get(b"O", b""))
        base = name.partition(b":")[0]
        place = _NO_ORDER if order is None or order >= 2**64 else order
        records.append((place, uid, base, fields.get(b"P"), fields.get(b"G")))
    records.sort(key=lambda record: record[:2])
    validity = str(uidValidity).encode("ascii")

    def entries() -> Iterator[Tuple[str, bytes, str]]:
        for _, uid, base, saved, guid in records:
            if saved is None:
                values = {"u": str(uid).encode("ascii"), "v": validity, "f": base, "g": guid or base}
                uidl = uidlFormat.expand(values)
            else:
                uidl = saved or base
            yield base.decode("utf-8", "surrogateescape"), uidl, f"uid {uid}"

    return OldUids.build(DOVECOT_UIDLIST, entries(), skipped.note(), pause)
