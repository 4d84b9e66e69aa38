"""
What the store reads in a message's header block: qpopper's C{X-UIDL:}
(a uid a sender may have forged, so only a candidate), whether C{Status:}
marks it read, and the block without the headers that mail programs
rewrite in place (flags, uids and counts), from which a message's own uid
is derived so that it survives those rewrites.
"""

from __future__ import annotations

import re
from typing import List, Optional

__all__ = ["HEADER_LIMIT", "VOLATILE_HEADERS", "isRead", "stableHeaders", "uidCandidate"]

# How much of a message's start is read as its header block at most: one
# whose blank line comes later is taken to end there (the same way at
# every scan, so its uid stays the same).
HEADER_LIMIT = 256 * 1024

# The headers that mail programs add or change in a spool without the
# message changing: read and answered flags (Status, X-Status,
# X-Keywords, Mozilla's X-Mozilla-*), IMAP servers' uids (X-UID,
# X-IMAPbase, X-IMAP), counts some agents write (Content-Length, Lines),
# and qpopper's X-UIDL.
VOLATILE_HEADERS = (
    "Status",
    "X-Status",
    "X-Keywords",
    "X-Mozilla-Status",
    "X-Mozilla-Status2",
    "X-Mozilla-Keys",
    "X-UID",
    "X-IMAPbase",
    "X-IMAP",
    "Content-Length",
    "Lines",
    "X-UIDL",
)

# One such header field, with its continuation lines.
_VOLATILE = re.compile(
    rb"(?im)^(?:" + b"|".join(re.escape(name.encode("ascii")) for name in VOLATILE_HEADERS)
    + rb")[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*"
)
_UIDL = re.compile(rb"(?im)^X-UIDL[ \t]*:([^\n]*\n(?:[ \t][^\n]*\n)*|[^\n]*\Z)")
_STATUS = re.compile(rb"(?im)^Status[ \t]*:([^\n]*)")
# What a uid may be (RFC 1939, section 7): 1 to 70 octets from 0x21 to 0x7E.
_VALID_UID = re.compile(rb"[\x21-\x7e]{1,70}")


def stableHeaders(block: bytes) -> bytes:
    """
    The header block without its volatile header fields.
    """
    return _VOLATILE.sub(b"", block)


def uidCandidate(block: bytes) -> Optional[str]:
    """
    The value of the block's C{X-UIDL:} field if there is exactly one and
    it is a valid uid (folding and the space around it removed), else
    C{None}.
    """
    found: List[bytes] = _UIDL.findall(block)
    if len(found) != 1:
        return None
    # Unfolded, without the space around it (inner space is invalid).
    value = found[0].replace(b"\r\n", b"").replace(b"\n", b"").strip(b" \t")
    if _VALID_UID.fullmatch(value) is None:
        return None
    return value.decode("ascii")


def isRead(block: bytes) -> bool:
    """
    Whether the block's first C{Status:} field has the read flag, C{R}.
    """
    match = _STATUS.search(block)
    return match is not None and b"R" in match.group(1)
