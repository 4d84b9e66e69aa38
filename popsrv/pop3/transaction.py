"""
L{Transaction}: the TRANSACTION state of a POP3 session, sans-IO.

A snapshot of the maildrop, taken at login and never changed, and the marks
the session sets on it: deleted messages, retrieved ones, LAST.  Message
numbers index the snapshot, so they never shift within a session; totals
are kept up to date by DELE and RSET, so STAT costs nothing in a big
maildrop.
"""

from __future__ import annotations

import itertools
from typing import FrozenSet, Iterable, Iterator, Optional, Sequence, Set, Tuple, Union

from popsrv.messages import MessageInfo, MessageList
from popsrv.pop3 import replies
from popsrv.pop3.commands import CommandError
from popsrv.pop3.effects import Effect, Reply, SendListing, Stream

__all__ = ["Transaction"]


class Transaction:
    """
    The messages of a logged-in session and their marks.

    @ivar retrievedOctets: the octets of the different messages RETR sent.
    @ivar topCount: how many TOP commands were answered.
    """

    def __init__(self, messages: Union[MessageList, Iterable[MessageInfo]]) -> None:
        # By column, however the store gave it: totals and listings are then
        # made at C speed.
        self._messages = messages if isinstance(messages, MessageList) else MessageList.of(messages)
        self._deleted: Set[int] = set()
        self._liveCount = len(self._messages)
        self._liveOctets = self._totalOctets = self._messages.totalSize()
        self._initialLast = self._last = self._messages.lastSeen()
        self._retrieved: Set[str] = set()
        self._newlySeen: Set[str] = set()
        self.retrievedOctets = 0
        self.topCount = 0

    @property
    def retrievedCount(self) -> int:
        """How many different messages RETR sent whole."""
        return len(self._retrieved)

    @property
    def initialTotals(self) -> Tuple[int, int]:
        """The number and octets of the messages at login."""
        return len(self._messages), self._totalOctets

    @property
    def deletedOctets(self) -> int:
        """The octets of the messages marked deleted."""
        return self._totalOctets - self._liveOctets

    @property
    def deletedCount(self) -> int:
        """How many messages are marked deleted."""
        return len(self._deleted)

    @property
    def remaining(self) -> int:
        """How many messages QUIT leaves in the maildrop."""
        return len(self._messages) - len(self._deleted)

    def totals(self) -> Tuple[int, int]:
        """
        The number and octets of the messages not marked deleted.
        """
        return self._liveCount, self._liveOctets

    def _message(self, argument: bytes) -> Tuple[int, MessageInfo]:
        """
        The number and entry of the live message C{argument} names.
        """
        if not argument.isdigit():
            raise CommandError(replies.invalidNumber(argument), malformed=True)
        number = int(argument)
        if not 1 <= number <= len(self._messages):
            raise CommandError(replies.noSuchMessage(len(self._messages)))
        if number - 1 in self._deleted:
            raise CommandError(replies.alreadyDeleted(number))
        return number, self._messages[number - 1]

    def handle(self, name: bytes, args: Sequence[bytes]) -> Effect:
        """
        Run a TRANSACTION command (its arguments already counted).
        """
        if name == b"STAT":
            count, octets = self.totals()
            return Reply(replies.ok(f"{count} {octets}"))
        if name == b"LIST":
            if args:
                number, message = self._message(args[0])
                return Reply(replies.ok(f"{number} {message.size}"))
            count, octets = self.totals()
            lines = self._numbered(b"%d %d", self._messages.sizes())
            return SendListing(f"{count} messages ({octets} octets)", lines, count)
        if name == b"UIDL":
            if args:
                number, message = self._message(args[0])
                return Reply(replies.ok(f"{number} {message.uid}"))
            # Uids are printable ASCII, whose UTF-8 is the same octets.
            lines = self._numbered(b"%d %s", map(str.encode, self._messages.uids()))
            return SendListing("unique-id listing follows", lines, self._liveCount)
        if name == b"RETR":
            number, message = self._message(args[0])
            return Stream(number, message, b"+OK %d octets\r\n" % (message.size,), None)
        if name == b"TOP":
            number, message = self._message(args[0])
            if not args[1].isdigit():
                raise CommandError(replies.invalidLineCount(args[1]), malformed=True)
            self.topCount += 1
            return Stream(number, message, replies.ok("top of message follows"), int(args[1]))
        if name == b"DELE":
            return self._dele(args[0])
        if name == b"RSET":
            return self._rset()
        if name == b"LAST":
            return Reply(replies.ok(f"{self._last} is the last read message."))
        return Reply(replies.ok())  # NOOP

    def _numbered(self, template: bytes, values: Iterable[object]) -> Iterator[bytes]:
        """
        The lines C{template % (number, value)} of the live messages, in
        order (at C speed: LIST and UIDL may have 100,000 of them).
        """
        lines = map(template.__mod__, zip(itertools.count(1), values))
        deleted = self._deleted
        if not deleted:
            return lines
        return (line for index, line in enumerate(lines) if index not in deleted)

    def _dele(self, argument: bytes) -> Reply:
        """DELE: mark a message deleted; it goes only at QUIT."""
        number, message = self._message(argument)
        self._deleted.add(number - 1)
        self._liveCount -= 1
        self._liveOctets -= message.size
        return Reply(replies.ok(f"message {number} deleted"))

    def _rset(self) -> Reply:
        """RSET: unmark every deleted message, and LAST goes back."""
        self._deleted.clear()
        self._liveCount, self._liveOctets = len(self._messages), self._totalOctets
        self._last = self._initialLast
        count, octets = self.totals()
        return Reply(replies.ok(f"maildrop has {count} messages ({octets} octets)"))

    def retrieved(self, number: int, message: Optional[MessageInfo] = None) -> None:
        """
        RETR sent message C{number} whole: LAST moves, and the message is
        marked seen at QUIT.

        @param message: its entry, if the caller has it at hand.
        """
        if message is None:
            message = self._messages[number - 1]
        self._last = max(self._last, number)
        if message.uid not in self._retrieved:
            self._retrieved.add(message.uid)
            self.retrievedOctets += message.size
            if not message.seen:
                self._newlySeen.add(message.uid)

    def marks(self) -> Tuple[FrozenSet[str], FrozenSet[str]]:
        """
        What QUIT applies: the uids of the messages marked deleted, and of
        those retrieved for the first time and not deleted (to mark seen).
        """
        deleted = frozenset(self._messages[index].uid for index in self._deleted)
        return deleted, frozenset(self._newlySeen - deleted)
