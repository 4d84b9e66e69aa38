"""
An mbox spool opened for one POP3 session, and every piece of blocking
work on it: the snapshot at login, reading a message, the rewrite at QUIT.

The session lock (in popsrv's state directory) is held from L{open} to
L{close}; the spool's own locks (dotlock and C{fcntl}, which delivery
agents take too) only while the spool is read at login, while a message
that moved is looked for, and while QUIT rewrites it.  Whatever happened
that the operator should know is kept in L{notes}, for the caller to log
on the reactor's thread.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import threading
from typing import AbstractSet, BinaryIO, Callable, Iterator, List, Optional, Set

from popsrv.errors import MaildropError, MessageVanished
from popsrv.store.mbox.index import ScanCache, scanWithCache
from popsrv.store.mbox.journal import Checkpoint, recover, rewrite
from popsrv.store.mbox.locking import LOCK_WAIT, Note, SpoolLocks
from popsrv.store.mbox.parsing import MAX_MESSAGES, SpoolScan, readMessage, scanSpool
from popsrv.store.mbox.snapshot import Snapshot, planRemoval
from popsrv.store.mbox.spool import OpenedSpool, SpoolFile
from popsrv.store.mbox.state import SpoolState

__all__ = ["SCANS", "SMALL_MESSAGE", "OpenedMbox"]

# Messages up to this size are read into memory for sending; bigger ones
# into an unnamed file in the state directory.
SMALL_MESSAGE = 1024 * 1024
# The scans of the spools this process served lately.
SCANS = ScanCache()


def _nothing() -> None:
    """Do nothing (no pause between chunks)."""


def _noCheckpoint(step: str) -> None:
    """Go on."""


class _Collected:
    """
    A message's unquoted content, as it is read: in memory while it is
    small, then in an unnamed temporary file.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._chunks: List[bytes] = []
        self._size = 0
        self._file: Optional[BinaryIO] = None

    def write(self, data: bytes) -> None:
        """
        Keep the next octets of the message.
        """
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > SMALL_MESSAGE:
            self._file = tempfile.TemporaryFile(dir=self._directory)
            self._file.write(b"".join(self._chunks))
            self._chunks = []

    def result(self) -> BinaryIO:
        """
        What was written, to read from its start.
        """
        if self._file is None:
            return io.BytesIO(b"".join(self._chunks))
        self._file.seek(0)
        return self._file

    def discard(self) -> None:
        """
        Drop what was kept (the message was not the one wanted).
        """
        if self._file is not None:
            self._file.close()
        self._chunks = []


class OpenedMbox:
    """
    One session's spool.

    @ivar notes: events for the operator, to log (and empty) after each
        piece of work.
    """

    def __init__(
        self,
        path: str,
        owner: str,
        stateDirectory: str,
        trusted: Optional[str] = None,
        lockWait: float = LOCK_WAIT,
        checkpoint: Checkpoint = _noCheckpoint,
    ) -> None:
        self.path = path
        self.owner = owner
        self.state = SpoolState(stateDirectory, path)
        self._trusted = trusted
        self._lockWait = lockWait
        self._checkpoint = checkpoint
        self._spool: Optional[OpenedSpool] = None
        self._snapshot: Optional[Snapshot] = None
        self._mutex = threading.Lock()
        self._users = 0
        self._closing = False
        self.notes: List[Note] = []

    def open(self) -> None:
        """
        Take the session lock, then open the spool's directory and file.

        @raise popsrv.errors.MaildropLocked: if another session has it.
        @raise popsrv.errors.MaildropUnusable: if the spool or a directory
            on its way is not what it should be.
        """
        self.state.lockSession(self.owner)
        try:
            self._spool = OpenedSpool.open(self.path, self._trusted)
        except BaseException:
            self.state.unlockSession()
            raise

    @contextlib.contextmanager
    def _using(self) -> Iterator[OpenedSpool]:
        """
        Use the spool for a piece of work: it stays open until the work is
        done, even if L{close} is called meanwhile.
        """
        with self._mutex:
            if self._closing or self._spool is None:
                raise MaildropError("the maildrop was released")
            self._users += 1
        try:
            yield self._spool
        finally:
            with self._mutex:
                self._users -= 1
                last = self._closing and self._users == 0
            if last:
                self._closeNow()

    @contextlib.contextmanager
    def _locked(self, spool: OpenedSpool) -> Iterator[Optional[SpoolFile]]:
        """
        Hold the spool's own locks, with any unfinished rewrite finished
        first; give the spool file (C{None} if there is no spool).
        """
        locks = SpoolLocks(spool, self._lockWait)
        try:
            file = locks.acquire()
            outcome = recover(self.state.path("journal"), file, self._checkpoint)
            if outcome is not None:
                SCANS.forget(self.path)
                what, why = outcome
                event = "mbox-journal-replayed" if what in ("replayed", "done") else "mbox-journal-discarded"
                self.notes.append(("warn", "journal of {path}: {what}: {why}",
                                   {"path": self.path, "what": what, "why": why, "event": event}))
            yield file
        finally:
            locks.release()
            self.notes.extend(locks.notes)

    def snapshot(self, pause: Callable[[], None] = _nothing) -> Snapshot:
        """
        Read the whole spool under its locks; return (and keep) the
        session's snapshot.
        """
        with self._using() as spool:
            with self._locked(spool) as file:
                if file is None:
                    scan = SpoolScan()
                else:
                    scan = scanWithCache(SCANS, self.path, file.fd, file.identity, pause)
            if scan.more:
                self.notes.append((
                    "warn", "{path} has more than {limit} messages: the first {limit} are served",
                    {"path": self.path, "limit": MAX_MESSAGES, "event": "mbox-too-many"},
                ))
            if not scan.junkIsBlank:
                self.notes.append((
                    "warn", "{path} has {count} octets before its first From line; they are not served",
                    {"path": self.path, "count": scan.junk, "event": "mbox-junk"},
                ))
            self._snapshot = Snapshot(scan, self.state.readSeen())
            return self._snapshot

    def _session(self) -> Snapshot:
        """
        The session's snapshot.

        @raise MaildropError: if there is none yet.
        """
        if self._snapshot is None:
            raise MaildropError(f"maildrop of {self.owner} has no snapshot")
        return self._snapshot

    def read(self, uid: str) -> BinaryIO:
        """
        Read one message of the snapshot, unquoted, checking that it is
        still the message the snapshot saw (if not, it is looked for under
        the spool's locks).

        @raise MessageVanished: if it is gone.
        @raise MaildropError: if it changed (another program rewrote its
            headers: its size is no longer the one LIST gave).
        """
        with self._using() as spool:
            snapshot = self._session()
            index = snapshot.index(uid)
            if index is None:
                raise MessageVanished(uid)
            read = self._readAt(spool, snapshot, index)
            if read is not None:
                return read
            # The spool changed: the next login reads it whole.
            SCANS.forget(self.path)
            with self._locked(spool) as file:
                snapshot.moved(scanSpool(file.fd) if file is not None else SpoolScan())
                read = self._readAt(spool, snapshot, index)
            if read is None:
                raise MaildropError(f"message {uid} was changed by another program")
            return read

    def _readAt(self, spool: OpenedSpool, snapshot: Snapshot, index: int) -> Optional[BinaryIO]:
        """
        Read message C{index} where the snapshot says it is now; C{None}
        if what is there is not that message as the snapshot saw it.

        @raise MessageVanished: if the snapshot knows it is gone.
        """
        file = spool.file
        if snapshot.starts[index] < 0 or file is None:
            raise MessageVanished(snapshot.uids[index])
        collected = _Collected(self.state.directory)
        facts = readMessage(
            file.fd, snapshot.starts[index], snapshot.contentStarts[index], snapshot.ends[index], collected.write
        )
        if facts.digest == snapshot.scan.digests[index] and facts.size == snapshot.scan.sizes[index]:
            return collected.result()
        collected.discard()
        return None

    def commit(self, deleted: AbstractSet[str], seen: AbstractSet[str], pause: Callable[[], None] = _nothing) -> None:
        """
        Remove the deleted messages from the spool (as it is now, found by
        uid and content) and record the retrieved ones as seen.

        @raise MaildropError: if the spool cannot be rewritten.
        """
        with self._using() as spool:
            snapshot = self._session()
            recorded = self.state.readSeen()
            with self._locked(spool) as file:
                if file is None:
                    missing = sorted(deleted)
                    record: Set[str] = set()
                else:
                    plan, record, missing = planRemoval(
                        snapshot, scanSpool(file.fd, pause), deleted, seen, recorded, file.identity, file.size()
                    )
                    if plan is not None:
                        if not file.writable:
                            raise MaildropError(f"popsrv may not write {self.path}")
                        self.state.makeDirectory()
                        SCANS.forget(self.path)
                        rewrite(self.state.path("journal"), file, plan, self._checkpoint)
            if missing:
                self.notes.append((
                    "info", "{count} deleted messages of {path} were removed by another program already",
                    {"count": len(missing), "path": self.path, "event": "mbox-already-removed"},
                ))
            self._record(record)

    def _record(self, uids: Set[str]) -> None:
        """
        Record the seen uids; a failure is only noted (the deletions are
        done).
        """
        try:
            if uids:
                self.state.makeDirectory()
                self.state.writeSeen(uids)
            else:
                self.state.forgetSeen()
        except (OSError, MaildropError) as error:
            self.notes.append((
                "warn", "could not record the retrieved messages of {path}: {error}",
                {"path": self.path, "error": str(error), "event": "mbox-seen-failed"},
            ))

    def close(self) -> None:
        """
        Close the spool and give up the session lock: now, or when the last
        work using them is done.  Closing again does nothing.
        """
        with self._mutex:
            if self._closing:
                return
            self._closing = True
            idle = self._users == 0
        if idle:
            self._closeNow()

    def _closeNow(self) -> None:
        """
        Close the spool and give up the session lock, now.
        """
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()
        self.state.unlockSession()

