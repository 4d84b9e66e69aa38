"""
The production backend: a user's maildrop is a Maildir on disk.

Layout and rules (the Maildir conventions of qmail, Courier and Dovecot):
    - C{new/} holds delivered mail; at login its messages move to C{cur/},
      with C{,S=<file size>,W=<POP3 size>} recorded in the name and an
      empty C{:2,} info part, so later logins need not read them again:
      each in one C{rename}, so that a crash or C{kill -9} at any moment
      loses and duplicates nothing (a big C{new/} is taken by a helper
      process, see L{popsrv.store.maildir.newmail}).
    - A message's uid (UIDL) is its base name (before C{:}) without the
      C{,S=} and C{,W=} fields, so it stays the same when those fields or
      the flags change; a base name that is not 1 to 70 printable octets is
      replaced by a stable hash of it.
    - C{,W=<n>} in a name is trusted as the POP3 size (CRLF line ends).
      C{,S=} alone is the size of the file as stored, which differs from the
      POP3 size when lines end in LF; such messages are measured once and
      C{W=} is added to their name.
    - Messages are numbered by delivery time (the leading number of the
      name), then name.
    - A Maildir moved from Dovecot or Courier, with the file in which that
      server kept its UIDLs, is served with those (see
      L{popsrv.store.maildir.migrated}).
    - The maildrop lock is C{flock} on C{<maildir>/popsrv.lock}: exclusive
      across processes, and freed by the kernel when a process dies.
    - The Maildir, C{cur/} and C{new/} are opened once, at lock time, and
      every later file operation of the session is relative to them (see
      L{popsrv.store.maildir.directory}); only regular files are messages.
    - RETR sets the Maildir "seen" flag (C{S}) at QUIT; DELE unlinks at QUIT.
"""

from __future__ import annotations

import functools
import os
import time
from typing import AbstractSet, BinaryIO, List, Mapping, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from zope.interface import implementer

from popsrv.errors import MaildropError, MessageVanished
from popsrv.interfaces import IMaildrop, IWholeMessages
from popsrv.messages import MessageInfo, MessageList
from popsrv.store.maildir.directory import LOCK_FILE, OpenedMaildir
from popsrv.store.maildir.files import MessageFiles, NeedsListing
from popsrv.store.maildir.listing import CurListing, ListingCache, recordedSize, splitName
from popsrv.store.maildir.migrated import Found, NeedsReading, findOldUids, logFindings, serveWithOldUids
from popsrv.store.maildir.newmail import ENTRY_WORK, NAME_WORK, GILPacer, recordSize
from popsrv.store.maildir.newmail import deliverNew as takeNewMail
from popsrv.store.maildir.olduids import Note
from popsrv.store.maildir.sharedparse import firstListing, worthSharing
from popsrv.store.maildir.skipped import logSkipped
from popsrv.store.uidlformat import DEFAULT_UIDL_FORMAT, UidlFormat, parseUidlFormat
from popsrv.threads import Runner, inline
from popsrv.wire.streaming import CHUNK_SIZE, sendFile

__all__ = ["LOCK_FILE", "MaildirMaildrop"]

# Below these, listing or committing is quicker done at once than handed to
# a thread (measured: about 20 % more sessions per second for small
# maildrops), and short enough not to hold up other sessions.
QUICK_DIRECTORY_SIZE = 32 * 1024
QUICK_COMMIT_FILES = 64
# How many entries of new/ are looked at to tell that it is empty.
QUICK_NEW_ENTRIES = 64
# How long after cur/ last changed its modification time is sure to change
# again with the next change: the timestamps of Linux's local file systems
# are as coarse as the kernel's clock tick (10 ms at most), those in whole
# seconds (FAT, some network file systems) need 2 s.  On NFS this holds only
# while the server's clock keeps in step with popsrv's.
SETTLED_NS = 20 * 10**6
COARSE_SETTLED_NS = 2 * 10**9 + SETTLED_NS
# The wall clock in nanoseconds (a name of its own for the tests).
_nowNS = time.time_ns

log = Logger()
# The parsed cur/ listings of the big Maildirs this process served lately.
LISTINGS = ListingCache()
_DEFAULT_FORMAT = parseUidlFormat(DEFAULT_UIDL_FORMAT)

# The messages a commit could not mark seen, with why.
_Problems = List[Tuple[str, Exception]]
# A snapshot's messages, and the entries it skipped: those that are not
# regular files, and the files it could not use, with why.
_Snapshot = Tuple[MessageList, List[str], List[Tuple[str, str]]]


class _NeedsMeasuring(Exception):
    """
    A listing begun at once turned out to need messages measured, or a
    file of old UIDLs read (reading files of any size): it is to be done by
    the runner.
    """


def _signature(status: os.stat_result) -> tuple[int, int, int, int]:
    """
    What identifies the state of a directory: device, inode, modification
    time and size.
    """
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)


def _settleTime(mtimeNS: int) -> int:
    """
    How long after a change with this modification time the next change is
    sure to show in it: timestamps in whole seconds are taken for coarse.
    """
    return COARSE_SETTLED_NS if mtimeNS % 10**9 == 0 else SETTLED_NS


@implementer(IMaildrop, IWholeMessages)
class MaildirMaildrop:
    """
    One user's Maildir, used by one POP3 session.

    Listing (which may read new messages whole to measure them, or wait for
    a helper process that does), committing
    (which unlinks and renames many files) and looking for a message renamed
    by another program are blocking file work: give a C{runner} such as
    L{threadRunner} to do them outside the reactor thread.  Work that is
    certainly small (no new mail, a small C{cur/} and nothing to measure; a
    commit of a few files still where the snapshot saw them) is done at
    once all the same.  Without a runner everything runs inline and returns
    its result directly.

    @ivar trusted: a directory above L{path} (the realm's root) below which
        no directory on the way to the Maildir may be a symbolic link, or
        C{None}: then only the Maildir itself may not be.
    @ivar uidlFormat: the C{pop3_uidl_format} of the Dovecot the Maildir
        may come from (by default Dovecot's).
    """

    def __init__(
        self,
        path: str,
        name: str,
        chunkSize: int = CHUNK_SIZE,
        runner: Optional[Runner] = None,
        trusted: Optional[str] = None,
        uidlFormat: Optional[UidlFormat] = None,
    ) -> None:
        self.path = path
        self.name = name
        self.trusted = trusted
        self.uidlFormat = uidlFormat or _DEFAULT_FORMAT
        self._run = runner or inline
        self._chunkSize = chunkSize
        self._listingKey = os.path.join(path, "cur")
        self._opened: Optional[OpenedMaildir] = None
        self._pacer = GILPacer()
        # The files of the snapshot's messages (their names shared with the
        # kept listing).
        self._files: Optional[MessageFiles] = None
        self._inThread = False
        self._unusable: List[Tuple[str, str]] = []
        # The old UIDLs of the last snapshot, and what to log about them.
        self._found: Optional[Found] = None
        self._oldUidNotes: Tuple[Sequence[Note], Optional[int]] = ([], None)
        # Why the helper process that took new mail, or listed cur/, failed
        # if it did.
        self._helperProblem: Optional[str] = None
        self._listingProblem: Optional[str] = None

    def lock(self) -> None:
        """
        Create the Maildir if needed, open it and lock it, or raise
        L{MaildropLocked}.

        The Maildir, its subdirectories and the directories between it and
        L{trusted} must be real directories, not symbolic links; they are
        opened now, and the session uses them
        through these descriptors only, so that a user who can write to a
        Maildir cannot point it at another user's mail, now or later.
        """
        self._opened = OpenedMaildir.open(self.path, self.name, self.trusted)

    def _maildir(self) -> OpenedMaildir:
        """
        The Maildir opened by L{lock}.

        @raise MaildropError: if it is not locked.
        """
        if self._opened is None:
            raise MaildropError(f"maildrop of {self.name} is not locked")
        return self._opened

    def listMessages(self) -> Union[Sequence[MessageInfo], Deferred[Sequence[MessageInfo]]]:
        """
        Move new mail to C{cur/} and snapshot C{cur/}: right away when that
        is certainly quick (no new mail, a small C{cur/} with nothing to
        measure), else through the runner.
        """
        maildir = self._maildir()
        if self._quickToList():
            # new/ was empty a moment ago: mail that lands there now waits
            # for the next session rather than being measured, perhaps
            # large, on this thread.
            try:
                return self._published(self._snapshot(maildir, False, False, False))
            except _NeedsMeasuring:
                pass
        snapshot = self._run(self._snapshot, maildir, True, self._run is not inline, True)
        if isinstance(snapshot, Deferred):
            return snapshot.addCallback(self._published)
        return self._published(snapshot)

    def _published(self, snapshot: _Snapshot) -> MessageList:
        """
        Log, on the calling thread, the entries a snapshot skipped; return
        its messages.
        """
        messages, skipped, unusable = snapshot
        intakeProblem, self._helperProblem = self._helperProblem, None
        listingProblem, self._listingProblem = self._listingProblem, None
        logSkipped(self.path, intakeProblem, listingProblem, skipped, unusable)
        if self._found is not None:
            notes, matched = self._oldUidNotes
            logFindings(self.path, self._found, notes, matched, len(messages))
        return messages

    def _quickToList(self) -> bool:
        """
        Whether listing costs at most a few milliseconds: C{new/} is empty
        and C{cur/} is a small directory (a directory's size grows with its
        entries; at most L{QUICK_DIRECTORY_SIZE} octets hold at most a few
        thousand names).
        """
        maildir = self._maildir()
        try:
            with maildir.using():
                if maildir.cur.status().st_size > QUICK_DIRECTORY_SIZE:
                    return False
                return maildir.new.looksEmpty(QUICK_NEW_ENTRIES)
        except OSError:
            return False

    def _snapshot(
        self, maildir: OpenedMaildir, deliverNew: bool = True, inThread: bool = False, mayMeasure: bool = True
    ) -> _Snapshot:
        """
        Move new mail to C{cur/} (unless told not to) and snapshot C{cur/},
        parsing only the names that the listing kept from an earlier
        snapshot does not know; return the snapshot and the names (such as
        C{cur/x}) of the entries that are not regular files.

        @param inThread: whether this runs in a thread of its own (so it
            may wait, and should yield the GIL now and then), not the
            reactor's.
        @param mayMeasure: whether messages may be measured here; if not,
            and one must be, raise L{_NeedsMeasuring} (having changed nothing).
        """
        with maildir.using():
            self._inThread = inThread
            try:
                self._found = findOldUids(maildir.top, self.uidlFormat, mayMeasure, self._pause)
            except NeedsReading:
                raise _NeedsMeasuring() from None
            skipped: List[str] = []
            self._unusable = []
            if deliverNew:
                others, unusable, self._helperProblem = takeNewMail(maildir.new, maildir.cur, self._pacer, inThread)
                skipped = ["new/" + name for name in others]
                self._unusable = [("new/" + name, why) for name, why in unusable]
            listing = LISTINGS.take(self._listingKey)
            before = maildir.cur.status()
            if listing.isEmpty() or listing.signature != _signature(before):
                if inThread:
                    # In a worker thread: let the clock tick of a change made
                    # a moment ago (by this very login, moving new mail) pass,
                    # so that the listing can be trusted by the next session.
                    left = before.st_mtime_ns + _settleTime(before.st_mtime_ns) - _nowNS()
                    if 0 < left <= SETTLED_NS:
                        time.sleep(left / 1e9)
                        before = maildir.cur.status()
                started = _nowNS()
                try:
                    others = self._listCur(maildir, listing, before, inThread, mayMeasure)
                except _NeedsMeasuring:
                    LISTINGS.give(self._listingKey, listing)
                    raise
                skipped += ["cur/" + name for name in others]
                # The listing is complete for this modification time of cur/
                # if that time's clock tick was over when the listing began:
                # any later change of cur/ gives it a later one.
                settled = started - before.st_mtime_ns > _settleTime(before.st_mtime_ns)
                # A message left out because it could not be measured is
                # tried again at the next snapshot, not forgotten.
                settled = settled and not any(name.startswith("cur/") for name, _ in self._unusable)
                listing.signature = _signature(before) if settled else None
            LISTINGS.give(self._listingKey, listing)
        messages = listing.messages
        fileNames: Mapping[str, str] = listing.fileNames
        self._oldUidNotes = ([], None)
        if self._found is not None:
            messages, fileNames, notes, matched = serveWithOldUids(
                self._listingKey, self._found.oldUids, messages, fileNames, self._pause
            )
            self._oldUidNotes = (notes, matched)
        self._files = MessageFiles(maildir.cur, fileNames, self._accountEntries)
        return messages, skipped, self._unusable

    def _listCur(
        self, maildir: OpenedMaildir, listing: CurListing, status: os.stat_result, inThread: bool, mayMeasure: bool
    ) -> List[str]:
        """
        Bring C{listing} up to date with C{cur/} (whose status is
        C{status}), in a helper process for the first listing of a big one;
        return the names of its entries that are not regular files.  See
        L{_snapshot}.
        """
        withSize = functools.partial(self._recordSizeInCur, maildir)
        if inThread and listing.isEmpty() and worthSharing(maildir.cur, status):
            parsed, order, unsized, others, self._listingProblem = firstListing(
                maildir.cur, self._accountEntries, self._accountNames, self._pause
            )
            listing.adopt(parsed, order, unsized, withSize, self._accountNames, self._pause)
            return others
        names, others = maildir.cur.listFiles(self._accountEntries)
        if not mayMeasure and any(recordedSize(splitName(name)[0]) is None for name in names):
            raise _NeedsMeasuring()
        listing.update(names, withSize, self._accountNames, self._pause)
        return others

    def _accountNames(self, count: int) -> None:
        self._pacer.account(count * NAME_WORK)

    def _accountEntries(self, count: int) -> None:
        self._pacer.account(count * ENTRY_WORK)

    def _pause(self) -> None:
        """
        Let other threads (the reactor's) have the GIL, if this work runs in
        a thread of its own.
        """
        if self._inThread:
            time.sleep(0)

    def _recordSizeInCur(self, maildir: OpenedMaildir, fileName: str) -> Optional[str]:
        """
        Measure a message of C{cur/} whose name lacks its size; one that
        cannot be measured or renamed is left out of this snapshot (and
        tried again at the next).
        """
        try:
            return recordSize(maildir.cur, fileName, fileName, maildir.cur, self._pacer)
        except OSError as error:
            self._unusable.append(("cur/" + fileName, error.strerror or type(error).__name__))
            return None

    def sendMessage(self, uid: str, consumer: IConsumer) -> Deferred[None]:
        """
        Stream one message file to the consumer.
        """
        try:
            opening = self._openMessage(uid)
        except Exception:
            return fail()
        if isinstance(opening, Deferred):
            return opening.addCallback(sendFile, consumer, self._chunkSize)
        return sendFile(opening, consumer, self._chunkSize)

    def readWhole(self, uid: str, limit: int) -> Optional[bytes]:
        """
        Read a small message's file whole, now: see L{IWholeMessages}.  A
        message whose file another program renamed since the snapshot is
        left to L{sendMessage}, which looks for it in the runner.
        """
        maildir, files = self._maildir(), self._files
        if files is None:
            raise MessageVanished(uid)
        with maildir.using():
            return files.read(uid, limit)

    def _openMessage(self, uid: str) -> Union[BinaryIO, Deferred[BinaryIO]]:
        """
        Open a message of the snapshot: by the name it was last known by,
        or, if that is gone, by the name another program gave it since
        (through the runner: looking for it lists C{cur/}).

        @raise MessageVanished: if it is gone, or no longer a regular file.
        """
        maildir, files = self._maildir(), self._files
        if files is None:
            raise MessageVanished(uid)
        try:
            with maildir.using():
                return files.open(uid)
        except FileNotFoundError:
            pass
        return self._run(self._openRenamed, maildir, files, uid)

    def _openRenamed(self, maildir: OpenedMaildir, files: MessageFiles, uid: str) -> BinaryIO:
        """
        Open a message whose name changed since the snapshot.
        """
        with maildir.using():
            try:
                return files.open(uid, files.locate(uid))
            except (KeyError, FileNotFoundError):
                raise MessageVanished(uid) from None

    def commit(self, deleted: AbstractSet[str], seen: AbstractSet[str]) -> Optional[Deferred[None]]:
        """
        Mark retrieved messages seen, then unlink the deleted ones (right
        away for a few files where the snapshot saw them, else through the
        runner).
        """
        maildir = self._maildir()
        files = self._files
        if files is None:
            return None
        result: Union[_Problems, Deferred[_Problems]]
        if len(deleted) + len(seen) <= QUICK_COMMIT_FILES:
            try:
                result = self._apply(maildir, files, deleted, seen, False)
            except NeedsListing:
                # Some message has a new name: looking for it lists cur/.
                # What was done already is found done.
                result = self._run(self._apply, maildir, files, deleted, seen, True)
        else:
            result = self._run(self._apply, maildir, files, deleted, seen, True)
        if isinstance(result, Deferred):
            return result.addCallback(self._logUnmarked)
        self._logUnmarked(result)
        return None

    def _logUnmarked(self, problems: _Problems) -> None:
        """
        Log, on the calling thread, the messages that could not be marked
        seen.
        """
        for uid, error in problems:
            log.warn("could not mark {uid} seen in {path}: {error}", uid=uid, path=self.path, error=error)

    def _apply(
        self,
        maildir: OpenedMaildir,
        files: MessageFiles,
        deleted: AbstractSet[str],
        seen: AbstractSet[str],
        mayList: bool = True,
    ) -> _Problems:
        """
        Mark retrieved messages seen, then unlink the deleted ones.

        Each removal is one C{unlink}, so a message is either intact or gone,
        whatever happens.  A message is unlinked by the name it had in the
        snapshot; only if that name is gone (its flags changed) is C{cur/}
        searched for its new one (unless C{mayList} is false: then
        L{NeedsListing} is raised).
        """
        problems: _Problems = []
        with maildir.using():
            for uid in seen - deleted:
                try:
                    files.markSeen(uid, mayList)
                except (KeyError, OSError) as error:
                    problems.append((uid, error))
            failed = []
            # In the order of the names, which is the order of delivery:
            # files made one after the other have neighbouring inodes, and
            # freeing them in that order touches each block of the inode
            # table once (measured: a tenth faster than in hash order for
            # 1,000 files).
            for uid in sorted(deleted):
                try:
                    files.unlink(uid, mayList)
                except OSError as error:
                    failed.append(error)
        if failed:
            raise MaildropError(
                f"{len(failed)} of {len(deleted)} messages could not be removed: {failed[0].strerror}"
            )
        return problems

    def release(self) -> None:
        """
        Unlock and close the Maildir (once work still using it is done).
        """
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()
