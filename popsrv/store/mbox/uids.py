"""
The uids of a spool's messages.

A message that carries exactly one valid C{X-UIDL:} header (qpopper wrote
one into every message it served, and clients remember them) keeps that
value as its uid, unless another message of the spool claims the same
value, or it equals another message's derived uid: a sender can write any
header, so a value that is not unique is not trusted, for any of the
messages that carry it.

Every other message's uid is derived from its content (see
L{popsrv.store.mbox.parsing}): the hexadecimal digest of its separator line,
its header block without the headers mail programs rewrite, and its body,
so it stays the same whatever is delivered, deleted or rewritten around it.
Identical copies (same digest) are told apart by their order: the second
gets C{-2} after the digest, the third C{-3}.  When the first is deleted
the second takes its uid, which is harmless: a client that remembers it
already has that very content.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence

__all__ = ["assignUids", "derivedUids"]


def derivedUids(digests: Sequence[bytes]) -> List[str]:
    """
    The uid each message would get from its content alone.
    """
    uids = []
    copies: Dict[bytes, int] = {}
    for digest in digests:
        number = copies.get(digest, 0) + 1
        copies[digest] = number
        uids.append(digest.hex() if number == 1 else f"{digest.hex()}-{number}")
    return uids


def assignUids(digests: Sequence[bytes], candidates: Sequence[Optional[str]]) -> List[str]:
    """
    The uid of each message, from its digest and its C{X-UIDL:} value (or
    C{None}): unique within the spool.
    """
    derived = derivedUids(digests)
    reserved = set(derived)
    claims = Counter(candidate for candidate in candidates if candidate is not None)
    return [
        candidate if candidate is not None and claims[candidate] == 1 and candidate not in reserved else own
        for own, candidate in zip(derived, candidates)
    ]
