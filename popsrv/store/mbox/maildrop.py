"""
L{MboxMaildrop}: a user's classic Unix mbox spool (C{/var/mail/alice}) as
an L{IMaildrop}.

At login the session lock is taken (C{flock} on a file of popsrv's state
directory: a second session gets C{[IN-USE]}, and delivery agents are
not held up), and the spool is read once, under its dotlock and C{fcntl}
lock, to find its messages; then its locks are given up.  RETR reads a
message where the snapshot found it and checks that it is still that
message; QUIT takes the locks again, finds the deleted messages in the
spool as it is then (mail delivered meanwhile, or a spool another program
rewrote) and removes them in place, crash-safely (see
L{popsrv.store.mbox.journal}).

Every piece of file work goes through the runner (see L{popsrv.threads}):
reading a spool of any size, waiting for a lock a delivery agent holds,
rewriting.  What the operator should know (a stale dotlock removed, a
journal replayed, a lock that stayed busy) is logged on the calling
thread, with a stable C{event} name.
"""

from __future__ import annotations

import time
from typing import AbstractSet, BinaryIO, Callable, Optional, Sequence, TypeVar, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from popsrv.errors import MaildropError, MaildropUnusable
from popsrv.interfaces import IMaildrop
from popsrv.messages import MessageInfo
from popsrv.store.mbox.journal import Checkpoint
from popsrv.store.mbox.locking import LOCK_WAIT
from popsrv.store.mbox.opened import OpenedMbox
from popsrv.store.mbox.snapshot import Snapshot
from popsrv.threads import Runner, inline
from popsrv.wire.streaming import CHUNK_SIZE, sendFile

__all__ = ["MboxMaildrop"]

log = Logger()
_T = TypeVar("_T")


def _pause() -> None:
    """Let other threads (the reactor's) have the GIL for a moment."""
    time.sleep(0)


def _noCheckpoint(step: str) -> None:
    """Go on."""


@implementer(IMaildrop)
class MboxMaildrop:
    """
    One user's mbox spool, used by one POP3 session.

    @ivar path: the spool's path.
    @ivar name: the owner's name, for replies and logs.
    @ivar stateDirectory: popsrv's state directory (session locks,
        journals and seen marks live in its C{mbox/}).
    @ivar trusted: a directory above L{path} (the realm's base) below which
        no directory on the way to the spool may be a symbolic link, or
        C{None}: then only the spool's own directory may not be.
    """

    def __init__(
        self,
        path: str,
        name: str,
        stateDirectory: str,
        runner: Optional[Runner] = None,
        trusted: Optional[str] = None,
        lockWait: float = LOCK_WAIT,
        chunkSize: int = CHUNK_SIZE,
        checkpoint: Checkpoint = _noCheckpoint,
    ) -> None:
        self.path = path
        self.name = name
        self.stateDirectory = stateDirectory
        self.trusted = trusted
        self._run = runner or inline
        self._pause: Callable[[], None] = _pause if runner not in (None, inline) else (lambda: None)
        self._lockWait = lockWait
        self._chunkSize = chunkSize
        self._checkpoint = checkpoint
        self._opened: Optional[OpenedMbox] = None

    def _work(self, opened: OpenedMbox, function: Callable[..., _T], *args: object) -> Union[_T, Deferred[_T]]:
        """
        Run blocking work through the runner; log its notes on this thread
        when it is done, whether it worked or not.
        """
        try:
            result = self._run(function, *args)
        except BaseException:
            self._publish(opened)
            raise
        if isinstance(result, Deferred):
            def published(outcome: object) -> object:
                self._publish(opened)
                return outcome

            return result.addBoth(published)
        self._publish(opened)
        return result

    def _publish(self, opened: OpenedMbox) -> None:
        """
        Log (and forget) what the work noted for the operator.
        """
        notes, opened.notes = opened.notes, []
        for level, text, fields in notes:
            log.emit(LogLevel.levelWithName(level), text, user=self.name, **fields)

    def lock(self) -> Union[None, Deferred[None]]:
        """
        Take the session lock and open the spool (a missing spool is an
        empty maildrop).

        @raise popsrv.errors.MaildropLocked: if another session has it.
        @raise MaildropUnusable: if the spool is not a regular file, or a
            directory on its way is a symbolic link (also logged, event
            C{mbox-unusable}).
        """
        opened = OpenedMbox(self.path, self.name, self.stateDirectory, self.trusted, self._lockWait,
                            self._checkpoint)

        def opening() -> None:
            opened.open()

        def done(_: object) -> None:
            self._opened = opened

        def unusable(error: MaildropUnusable) -> None:
            log.warn("cannot serve the spool {path}: {error}", path=self.path, error=str(error), user=self.name,
                     event="mbox-unusable")

        try:
            result = self._work(opened, opening)
        except MaildropUnusable as error:
            unusable(error)
            raise
        if isinstance(result, Deferred):
            def failed(failure: Failure) -> Failure:
                if isinstance(failure.value, MaildropUnusable):
                    unusable(failure.value)
                return failure

            return result.addCallbacks(done, failed)
        done(None)
        return None

    def _session(self) -> OpenedMbox:
        """
        The spool opened by L{lock}.

        @raise MaildropError: if it is not locked.
        """
        if self._opened is None:
            raise MaildropError(f"maildrop of {self.name} is not locked")
        return self._opened

    def listMessages(self) -> Union[Sequence[MessageInfo], Deferred[Sequence[MessageInfo]]]:
        """
        Read the spool under its locks (replaying an unfinished rewrite
        first) and return its messages.
        """
        opened = self._session()
        snapshot = self._work(opened, opened.snapshot, self._pause)
        if isinstance(snapshot, Deferred):
            return snapshot.addCallback(Snapshot.messages)
        return snapshot.messages()

    def sendMessage(self, uid: str, consumer: IConsumer) -> Deferred[None]:
        """
        Read one message (checking it is still the one the snapshot saw),
        then stream it to the consumer.
        """
        try:
            opened = self._session()
            reading = self._work(opened, opened.read, uid)
        except Exception:
            return fail()
        if isinstance(reading, Deferred):
            return reading.addCallback(self._send, consumer)
        return self._send(reading, consumer)

    def _send(self, message: BinaryIO, consumer: IConsumer) -> Deferred[None]:
        """Stream a message read by the runner."""
        return sendFile(message, consumer, self._chunkSize)

    def commit(self, deleted: AbstractSet[str], seen: AbstractSet[str]) -> Union[None, Deferred[None]]:
        """
        Remove the deleted messages from the spool as it is now (under its
        locks, crash-safely), and record the retrieved ones as seen.
        """
        opened = self._session()
        return self._work(opened, opened.commit, frozenset(deleted), frozenset(seen), self._pause)

    def release(self) -> None:
        """
        Close the spool and give up the session lock (once work still
        using them is done).
        """
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()
