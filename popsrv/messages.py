"""
The snapshot of a maildrop that a store gives the protocol at login:
L{MessageInfo} for one message, L{MessageList} for all of them, by column.
"""

from __future__ import annotations

import array
from collections.abc import Sequence as SequenceABC
from typing import ClassVar, Iterable, Iterator, NamedTuple, Sequence, Union, overload

__all__ = ["MessageInfo", "MessageList"]


class MessageInfo(NamedTuple):
    """
    What POP3 needs to know about one message before reading it.

    (A named tuple: quick to make, as L{MessageList} makes one each time an
    item is asked for.)

    @ivar uid: the message's unique id, as UIDL shows it: 1 to 70 octets in
        the range 0x21 to 0x7E, unique within the maildrop and the same in
        every session for as long as the message exists.
    @ivar size: the exact number of octets RETR sends for the message before
        dot-stuffing: every line ended by CRLF, including a CRLF added after
        an unterminated last line (see L{popsrv.wire.framing.normalizedSize}).
    @ivar seen: whether the message was already retrieved in an earlier
        session (LAST reports the highest such message number).
    """

    uid: str
    size: int
    seen: bool = False


class MessageList(SequenceABC[MessageInfo]):
    """
    A snapshot of messages (a sequence of L{MessageInfo}) stored by column:
    a list of uids, an array of sizes, and the seen flags as bytes.

    However many messages it holds, it is three objects for the garbage
    collector to track (100,000 L{MessageInfo} objects would make every
    full collection of a process that keeps such snapshots take a tenth of
    a second); a L{MessageInfo} is made each time an item is asked for.
    Backends with big maildrops should return one from
    L{IMaildrop.listMessages}.
    """

    __slots__ = ("_uids", "_sizes", "_seen")

    def __init__(self, uids: list[str], sizes: array.array[int], seen: bytearray) -> None:
        self._uids = uids
        self._sizes = sizes
        self._seen = seen

    @classmethod
    def of(cls, messages: Iterable[MessageInfo]) -> MessageList:
        """
        Make one from L{MessageInfo} items.
        """
        uids, sizes, seen = [], array.array("q"), bytearray()
        for info in messages:
            uids.append(info.uid)
            sizes.append(info.size)
            seen.append(bool(info.seen))
        return cls(uids, sizes, seen)

    def __len__(self) -> int:
        return len(self._uids)

    @overload
    def __getitem__(self, index: int) -> MessageInfo: ...

    @overload
    def __getitem__(self, index: slice) -> list[MessageInfo]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[MessageInfo, list[MessageInfo]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return MessageInfo(self._uids[index], self._sizes[index], bool(self._seen[index]))

    def __iter__(self) -> Iterator[MessageInfo]:
        return map(MessageInfo, self._uids, self._sizes, map(bool, self._seen))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MessageList):
            return self._uids == other._uids and self._sizes == other._sizes and self._seen == other._seen
        if isinstance(other, SequenceABC) and not isinstance(other, (str, bytes)):
            return list(self) == list(other)
        return NotImplemented

    # Unhashable, as a list is: it compares equal to lists.  (typeshed
    # declares list.__hash__ the same way, with the same ignore.)
    __hash__: ClassVar[None] = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MessageList({list(self)!r})"

    def uids(self) -> Sequence[str]:
        """
        The messages' uids, in order (not to be changed).
        """
        return self._uids

    def sizes(self) -> Sequence[int]:
        """
        The messages' sizes, in order (not to be changed).
        """
        return self._sizes

    def totalSize(self) -> int:
        """
        The sum of the messages' sizes.
        """
        return sum(self._sizes)

    def lastSeen(self) -> int:
        """
        The number (from 1) of the last message marked seen, or 0.
        """
        return self._seen.rfind(1) + 1
