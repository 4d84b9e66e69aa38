"""
L{OpenedMaildrop}: the maildrop a POP3 session logged in to, from the lock
to the release: streaming messages, committing the deletions at QUIT, and
releasing it exactly once.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from popsrv.errors import MessageVanished
from popsrv.interfaces import IMaildrop, IWholeMessages
from popsrv.pop3 import replies
from popsrv.pop3.effects import Stream, Update
from popsrv.pop3.sending import MessageConsumer

__all__ = ["OpenedMaildrop", "Refusal", "StreamBroken"]


class StreamBroken(Exception):
    """
    A message failed after part of it was sent: the connection must break.
    """


class Refusal:
    """
    The C{-ERR} reply to send instead of a message that could not be read.
    """

    __slots__ = ("reply",)

    def __init__(self, reply: bytes) -> None:
        self.reply = reply


class OpenedMaildrop:
    """
    A locked maildrop and the realm's logout.

    @param log: the session's logger (its events keep one namespace).
    """

    def __init__(self, maildrop: IMaildrop, logout: Callable[[], None], log: Logger, peer: str) -> None:
        self.maildrop = maildrop
        self._logout = logout
        self._log = log
        self._peer = peer
        self._released = False
        self._whole: Optional[IWholeMessages] = IWholeMessages(maildrop, None)

    def readWhole(self, effect: Stream, limit: int) -> Union[bytes, Refusal, None]:
        """
        Read a message of at most C{limit} octets whole, now, if the
        maildrop can (see L{IWholeMessages}): return its stored octets, or
        the L{Refusal} to send if it cannot be read; C{None} if it is to be
        streamed instead.
        """
        if self._whole is None:
            return None
        try:
            return self._whole.readWhole(effect.message.uid, limit)
        except MessageVanished:
            return Refusal(replies.messageVanished(effect.number))
        except Exception:
            self._log.failure(
                "message {uid} could not be read", uid=effect.message.uid, peer=self._peer, user=self.maildrop.name,
                operation="read", event="storage-error",
            )
            return Refusal(replies.messageUnreadable(effect.number))

    def stream(
        self, effect: Stream, consumer: MessageConsumer, gone: Callable[[], bool]
    ) -> defer.Deferred[Optional[bytes]]:
        """
        Stream a message to C{consumer}, which frames it for the client.
        (Callbacks rather than a coroutine: this runs for every RETR, and a
        coroutine costs a measurable share of a short session.)

        @param gone: whether the connection is gone (then a failure is not
            worth a log line: the client stopped reading).
        @return: fires with C{None} once it is all written (or the
            connection is gone), or with the C{-ERR} reply if it could not be
            read before anything was sent; fails with L{StreamBroken} if it
            failed after part of it was sent (logged).
        """
        uid, number = effect.message.uid, effect.number

        def failed(failure: Failure) -> Optional[bytes]:
            if gone():
                return None
            if consumer.started:
                self._log.failure(
                    "message {uid} failed while streaming", failure, uid=uid, peer=self._peer,
                    user=self.maildrop.name, operation="stream", event="storage-error",
                )
                raise StreamBroken()
            if failure.check(MessageVanished):
                return replies.messageVanished(number)
            self._log.failure(
                "message {uid} could not be read", failure, uid=uid, peer=self._peer, user=self.maildrop.name,
                operation="read", event="storage-error",
            )
            return replies.messageUnreadable(number)

        sending: defer.Deferred[None] = defer.maybeDeferred(self.maildrop.sendMessage, uid, consumer)
        return sending.addCallbacks(lambda _: None, failed)

    async def commit(self, update: Update) -> bool:
        """
        Apply QUIT's deletions and seen marks; return whether that worked
        (a failure is logged with its traceback, for the operator).
        """
        if not update.deleted and not update.seen:
            return True
        try:
            await defer.maybeDeferred(self.maildrop.commit, update.deleted, update.seen)
        except Exception:
            self._log.failure(
                "could not apply the deletions of {user}", user=self.maildrop.name, peer=self._peer,
                operation="commit", event="storage-error",
            )
            return False
        return True

    def release(self) -> None:
        """
        Unlock the maildrop and log out, once.
        """
        if self._released:
            return
        self._released = True
        try:
            self.maildrop.release()
        except Exception:
            self._log.failure(
                "could not release the maildrop of {user}", user=self.maildrop.name, peer=self._peer,
                operation="release", event="storage-error",
            )
        self._logout()
