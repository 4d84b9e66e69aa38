"""
Locking a spool the way delivery agents do, so that popsrv and they never
write it at the same time (Debian's mail policy: a dotlock and an C{fcntl}
lock, both): a dotlock C{<spool>.lock} in the spool's directory, made
NFS-safely as liblockfile makes it (a file of a unique name, then a hard
link to the lock's name, which succeeded if that name then is the file),
and an C{fcntl} write lock on the whole spool (an open file description
lock on Linux, which closing another descriptor of the spool does not
undo).

The two are taken without waiting, C{fcntl} first; if the second is
busy, the first is given up and both are tried again a little later, until
L{LOCK_WAIT} has passed: holding one while waiting for the other could
deadlock with a program that takes them in the other order.  popsrv holds
them for moments (at login, to read the spool; at QUIT, to rewrite it),
never for a session, so delivery goes on during sessions.  At most
L{MAX_WAITING} threads of a process wait at once; locks found busy while
they do are not waited for.

A dotlock whose file has not changed for L{STALE_AGE} (five minutes, the
age at which liblockfile and c-client break one, measured on the clock of
the file's own server) is left over by a program that died: it is
removed.  popsrv's own dotlocks say whose they are (the process id on the
first line, as liblockfile's C{L_PID} locks do, then C{popsrv}, the host
name and the process id namespace), so one left by a popsrv process of
this host that no longer runs (killed while it held it) is removed at
once; a process id in any other program's dotlock is not trusted (it may
come from another host, or another container).  If popsrv may not make files in the spool's directory, it locks
with C{fcntl} alone (as Postfix's C{virtual} and Dovecot's default readers
do) and says so once per spool: refusing would leave the mail unreadable,
and every delivery agent that takes a dotlock also takes the C{fcntl}
lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import socket
import stat
import struct
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from popsrv.errors import MaildropError
from popsrv.store.mbox.spool import OpenedSpool, SpoolFile

__all__ = ["LOCK_WAIT", "MAX_WAITING", "STALE_AGE", "WAITING", "Note", "SpoolLocks"]

# How long taking the locks may wait for another program to give them up.
LOCK_WAIT = 20.0
# The age after which a dotlock is taken for a leftover.
STALE_AGE = 300
# The first pause between two tries, and the longest.
FIRST_PAUSE = 0.01
LONGEST_PAUSE = 0.5
# How many threads of a process may wait for locks at once.  They wait in
# the reactor's thread pool (Twisted's has 10 threads), which also opens
# every other maildrop and checks passwords: a dotlock no one gives up (a
# directory, or a file kept fresh, that a user made in a /var/mail anyone
# may write to) would otherwise hold a thread for the whole wait at every
# login, and a few such spools every login of the process.
MAX_WAITING = 4
WAITING = threading.BoundedSemaphore(MAX_WAITING)
# What making the dotlock fails with when popsrv cannot make one there at
# all (rather than because another program holds it).
_NO_DOTLOCK_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG)
# What popsrv writes in its dotlocks after its process id, and how it
# reads them back.
_OWNER_FORMAT = b"%d\npopsrv %s %s\n"
_OWNER = re.compile(rb"(\d+)\npopsrv (\S+) (\S+)\n")
# Open file description locks (Linux): a struct flock of 64-bit offsets.
_OFD = sys.platform.startswith("linux") and hasattr(fcntl, "F_OFD_SETLK") and struct.calcsize("l") == 8

# An event to log, on the reactor's thread: (level, format, fields).
Note = Tuple[str, str, Dict[str, object]]

# The spools for which this process said it cannot make dotlocks.
_withoutDotlock: Set[str] = set()
_withoutDotlockMutex = threading.Lock()


def _processNamespace() -> bytes:
    """
    This process's process id namespace (C{-} where there is none to
    tell), so that a process id is only checked in the namespace it
    belongs to.
    """
    try:
        return os.fsencode(os.readlink("/proc/self/ns/pid"))
    except OSError:
        return b"-"


def _owner() -> bytes:
    """
    What this process writes in the dotlocks it makes.
    """
    return _OWNER_FORMAT % (os.getpid(), os.fsencode(socket.gethostname()) or b"-", _processNamespace())


def _leftByDeadPopsrv(content: bytes) -> bool:
    """
    Whether a dotlock's content says it is popsrv's, made on this host in
    this process id namespace by a process that no longer runs.
    """
    match = _OWNER.fullmatch(content)
    if match is None or match.group(3) == b"-":
        return False
    pid, host, namespace = int(match.group(1)), match.group(2), match.group(3)
    if host != (os.fsencode(socket.gethostname()) or b"-") or namespace != _processNamespace():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _lockRange(fd: int, kind: int) -> None:
    """
    Lock (or unlock, with C{F_UNLCK}) the whole file C{fd} without
    waiting.

    @raise OSError: with C{EAGAIN} or C{EACCES} if another holds a lock.
    """
    if _OFD:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0))
    else:
        fcntl.lockf(fd, {fcntl.F_WRLCK: fcntl.LOCK_EX, fcntl.F_RDLCK: fcntl.LOCK_SH}.get(kind, fcntl.LOCK_UN)
                    | (fcntl.LOCK_NB if kind != fcntl.F_UNLCK else 0))


class _NoDotlock(Exception):
    """
    popsrv cannot make a dotlock in the spool's directory.
    """


class SpoolLocks:
    """
    The dotlock and C{fcntl} lock of one spool, taken and given up
    together.

    @ivar notes: what happened that the operator should know (a stale
        dotlock removed, no dotlock possible, a wait that timed out or was
        not begun), to log on the reactor's thread.
    """

    def __init__(
        self,
        spool: OpenedSpool,
        wait: float = LOCK_WAIT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        waiting: threading.BoundedSemaphore = WAITING,
    ) -> None:
        self._spool = spool
        self._wait = wait
        self._clock = clock
        self._sleep = sleep
        self._waiting = waiting
        self._locked: Optional[SpoolFile] = None
        # The dotlock's device and inode, while popsrv holds it.
        self._dotlock: Optional[Tuple[int, int]] = None
        # Whether a stale dotlock popsrv may not remove was reported.
        self._staleKept = False
        self.notes: List[Note] = []

    @property
    def _lockName(self) -> str:
        """The dotlock's name, in the spool's directory."""
        return self._spool.name + ".lock"

    def acquire(self) -> Optional[SpoolFile]:
        """
        Take both locks on the file the spool's name refers to (opening it
        anew if another program replaced it); return that file, or
        C{None} if there is no spool (nothing to lock).

        @raise MaildropError: if they are not free within the wait, or are
            busy while L{MAX_WAITING} other threads wait already.
        """
        deadline = self._clock() + self._wait
        pause = FIRST_PAUSE
        waiting = False
        try:
            while True:
                self._spool.refresh()
                file = self._spool.file
                if file is None:
                    return None
                busy = self._tryBoth(file)
                if busy is None:
                    if self._spool.current() == file.identity:
                        return file
                    # Replaced meanwhile: lock the new one.
                    self.release()
                    continue
                if not waiting:
                    waiting = self._waiting.acquire(blocking=False)
                    if not waiting:
                        self.notes.append((
                            "warn", "the {lock} of {path} is held by another program, and other threads wait "
                            "for locks already: not waiting",
                            {"lock": busy, "path": self._spool.path, "event": "mbox-lock-busy"},
                        ))
                        raise MaildropError(f"{self._spool.path} is locked by another program ({busy})")
                left = deadline - self._clock()
                if left <= 0:
                    self.notes.append((
                        "warn", "gave up waiting for the {lock} of {path}, held by another program",
                        {"lock": busy, "path": self._spool.path, "event": "mbox-lock-timeout"},
                    ))
                    raise MaildropError(f"{self._spool.path} is locked by another program ({busy})")
                self._sleep(min(pause, left))
                pause = min(pause * 2, LONGEST_PAUSE)
        finally:
            if waiting:
                self._waiting.release()

    def _tryBoth(self, file: SpoolFile) -> Optional[str]:
        """
        Try to take both locks; return C{None} if they were taken, else
        which one is busy (and hold neither).
        """
        kind = fcntl.F_WRLCK if file.writable else fcntl.F_RDLCK
        try:
            _lockRange(file.fd, kind)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                return "fcntl lock"
            raise MaildropError(f"cannot lock {self._spool.path}: {error.strerror}") from None
        self._locked = file
        try:
            if self._tryDotlock():
                return None
        except _NoDotlock as reason:
            self._withoutDotlock(str(reason))
            return None
        except BaseException:
            self._unlockFile()
            raise
        self._unlockFile()
        return "dotlock"

    def _withoutDotlock(self, reason: str) -> None:
        """
        Lock with C{fcntl} alone; say so once per spool.
        """
        with _withoutDotlockMutex:
            if self._spool.path in _withoutDotlock:
                return
            _withoutDotlock.add(self._spool.path)
        self.notes.append((
            "warn", "cannot make the dotlock of {path} ({reason}): locking it with fcntl alone",
            {"path": self._spool.path, "reason": reason, "event": "mbox-no-dotlock"},
        ))

    def _tryDotlock(self) -> bool:
        """
        Try to make the dotlock once, removing a stale one in the way;
        return whether popsrv holds it.

        @raise _NoDotlock: if popsrv cannot make files in the directory.
        """
        directory = self._spool.directory
        assert directory is not None
        unique = f".popsrv-lk.{os.getpid()}.{secrets.token_hex(6)}"
        try:
            fd = os.open(unique, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=directory)
        except OSError as error:
            if error.errno in _NO_DOTLOCK_ERRORS:
                raise _NoDotlock(error.strerror or str(error)) from None
            raise MaildropError(f"cannot make the dotlock of {self._spool.path}: {error.strerror}") from None
        try:
            try:
                os.write(fd, _owner())
                mine = os.fstat(fd)
            finally:
                os.close(fd)
            try:
                os.link(unique, self._lockName, src_dir_fd=directory, dst_dir_fd=directory, follow_symlinks=False)
            except OSError as error:
                # Over NFS, a link that worked may report an error: what the
                # lock's name is says.  (Not the file's count of links:
                # another user who may write the directory can link it too.)
                if error.errno == errno.ENAMETOOLONG:
                    raise _NoDotlock(error.strerror or str(error)) from None
            try:
                held = os.stat(self._lockName, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if (held.st_dev, held.st_ino) == (mine.st_dev, mine.st_ino):
                self._dotlock = (mine.st_dev, mine.st_ino)
                return True
            # The file's time is the file server's "now".
            return self._removeIfStale(mine.st_mtime)
        finally:
            try:
                os.unlink(unique, dir_fd=directory)
            except FileNotFoundError:
                pass

    def _removeIfStale(self, now: float) -> bool:
        """
        Remove the dotlock in the way if it is stale; return C{False} (try
        again).
        """
        directory = self._spool.directory
        try:
            held = os.stat(self._lockName, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            return False
        age = now - held.st_mtime
        if not stat.S_ISREG(held.st_mode):
            return False
        if age > STALE_AGE:
            why = f"{age:.0f} s old"
        elif held.st_size < 256 and _leftByDeadPopsrv(self._readLock(held)):
            why = "its popsrv process is gone"
        else:
            return False
        again = os.stat(self._lockName, dir_fd=directory, follow_symlinks=False)
        if (again.st_ino, again.st_mtime_ns) != (held.st_ino, held.st_mtime_ns):
            return False
        try:
            os.unlink(self._lockName, dir_fd=directory)
        except FileNotFoundError:
            return False
        except OSError as error:
            # Another user's, in a directory with the sticky bit: only its
            # owner may remove it.  Wait as for a lock that is held.
            if not self._staleKept:
                self._staleKept = True
                self.notes.append((
                    "warn", "cannot remove the stale dotlock of {path} ({why}): {error}",
                    {"path": self._spool.path, "age": age, "why": why, "error": error.strerror,
                     "event": "mbox-stale-dotlock-kept"},
                ))
            return False
        self.notes.append((
            "warn", "removed the stale dotlock of {path} ({why})",
            {"path": self._spool.path, "age": age, "why": why, "event": "mbox-stale-dotlock"},
        ))
        return False

    def _readLock(self, held: os.stat_result) -> bytes:
        """
        The content of the dotlock in the way, if it is still the file of
        status C{held} (else nothing).
        """
        try:
            fd = os.open(self._lockName, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self._spool.directory)
        except OSError:
            return b""
        try:
            if os.fstat(fd).st_ino != held.st_ino:
                return b""
            return os.read(fd, 256)
        finally:
            os.close(fd)

    def _unlockFile(self) -> None:
        """
        Give up the C{fcntl} lock.
        """
        locked, self._locked = self._locked, None
        if locked is not None:
            try:
                _lockRange(locked.fd, fcntl.F_UNLCK)
            except OSError:
                pass

    def release(self) -> None:
        """
        Give up both locks (the dotlock only if it is still popsrv's).
        """
        dotlock, self._dotlock = self._dotlock, None
        if dotlock is not None and self._spool.directory is not None:
            try:
                status = os.stat(self._lockName, dir_fd=self._spool.directory, follow_symlinks=False)
                if (status.st_dev, status.st_ino) == dotlock:
                    os.unlink(self._lockName, dir_fd=self._spool.directory)
            except OSError:
                pass
        self._unlockFile()
