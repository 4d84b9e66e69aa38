"""
An in-memory maildrop and realm, for embedding popsrv and for tests.

They implement the same contracts as the Maildir backend, so an application
or a test can serve messages it holds in memory through the real protocol.
"""

from __future__ import annotations

import io
import itertools
from typing import AbstractSet, Callable, Iterable, Mapping, Tuple, Type, Union

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from zope.interface import Interface, implementer

from popsrv.errors import MaildropLocked, MessageVanished
from popsrv.interfaces import IMaildrop
from popsrv.messages import MessageInfo
from popsrv.wire.framing import normalizedSize
from popsrv.wire.streaming import sendFile

__all__ = ["MemoryMaildrop", "MemoryRealm"]


@implementer(IMaildrop)
class MemoryMaildrop:
    """
    A maildrop whose messages are byte strings in memory.

    @ivar messages: the stored messages by uid, in delivery order.
    @ivar seenUids: uids of messages retrieved in an earlier session.
    @ivar locked: whether a session holds the maildrop now.
    """

    _uids = itertools.count(1)

    def __init__(self, name: str, messages: Iterable[bytes] = ()) -> None:
        self.name = name
        self.messages: dict[str, bytes] = {}
        self.seenUids: set[str] = set()
        self.locked = False
        for message in messages:
            self.add(message)

    def add(self, message: bytes, uid: Union[str, None] = None) -> str:
        """
        Deliver a message; return its uid (a fresh one unless given).
        """
        if uid is None:
            uid = f"mem{next(self._uids)}"
        self.messages[uid] = message
        return uid

    def lock(self) -> None:
        """
        Take the maildrop, or raise L{MaildropLocked} if a session has it.
        """
        if self.locked:
            raise MaildropLocked(f"maildrop of {self.name} is in use")
        self.locked = True

    def listMessages(self) -> list[MessageInfo]:
        """
        Snapshot the messages in delivery order.
        """
        return [
            MessageInfo(uid, normalizedSize([body]), uid in self.seenUids)
            for uid, body in self.messages.items()
        ]

    def sendMessage(self, uid: str, consumer: IConsumer) -> Deferred[None]:
        """
        Stream one message to the consumer.
        """
        body = self.messages.get(uid)
        if body is None:
            return fail(MessageVanished(uid))
        return sendFile(io.BytesIO(body), consumer)

    def commit(self, deleted: AbstractSet[str], seen: AbstractSet[str]) -> None:
        """
        Remove the deleted messages and remember the seen ones, at once.
        """
        self.seenUids.update(seen)
        for uid in deleted:
            self.messages.pop(uid, None)
            self.seenUids.discard(uid)

    def release(self) -> None:
        """
        Let the next session have the maildrop.
        """
        self.locked = False


@implementer(IRealm)
class MemoryRealm:
    """
    A realm that hands out L{MemoryMaildrop}s by login name.

    @ivar maildrops: the maildrops by avatar id (text).
    """

    def __init__(self, maildrops: Union[Mapping[str, MemoryMaildrop], None] = None) -> None:
        self.maildrops: dict[str, MemoryMaildrop] = dict(maildrops or {})

    def maildrop(self, name: str) -> MemoryMaildrop:
        """
        Return the named maildrop, creating an empty one on first use.
        """
        if name not in self.maildrops:
            self.maildrops[name] = MemoryMaildrop(name)
        return self.maildrops[name]

    def requestAvatar(
        self, avatarId: Union[bytes, str, Tuple[()]], mind: object, *interfaces: Type[Interface]
    ) -> Tuple[Type[Interface], IMaildrop, Callable[[], None]]:
        """
        Return the maildrop of the user C{avatarId}.
        """
        if IMaildrop not in interfaces:
            raise NotImplementedError("MemoryRealm only provides IMaildrop")
        if not isinstance(avatarId, (bytes, str)):
            raise UnauthorizedLogin("anonymous logins are not served")
        if isinstance(avatarId, bytes):
            try:
                avatarId = avatarId.decode("utf-8")
            except UnicodeDecodeError:
                raise UnauthorizedLogin("login name is not UTF-8")
        return IMaildrop, self.maildrop(avatarId), lambda: None
