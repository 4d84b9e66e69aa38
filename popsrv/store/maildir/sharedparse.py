"""
The first listing of a big C{cur/} made with a helper process
(L{popsrv.store.maildir.helper}), on another core (L{firstListing}): while
another session is logged in, listed and parsed wholly in the helper, so
that the work holds the server's GIL, which the other sessions need, for
as little as can be; otherwise parsed on two cores at once, a share of the
names in the helper (all of them, if another session logged in while this
one listed C{cur/}) and the rest in the session's thread.

A shared parse starts the helper before the directory is read, so that its
start (some 25 ms) is not waited for.  Whatever goes wrong with a helper
(it cannot start, fails, or writes what cannot be read), the session does
the work itself, and says why.  Measured figures: C{benchmarks/README.md},
"firstlogin".
"""

from __future__ import annotations

import array
import os
import select
import subprocess
import sys
import time
from typing import Callable, List, Optional, Tuple, Union

from popsrv.store.maildir import helper
from popsrv.store.maildir.directory import Directory, OpenedMaildir
from popsrv.store.maildir.listing import ACCOUNT_STEP
from popsrv.store.maildir.parsing import (
    CODE_DIGEST,
    Columns,
    inTimeOrder,
    mergedInSteps,
    parseInSteps,
    sortedInSteps,
    tiesBroken,
)

__all__ = [
    "HELPER_SHARE", "HELPER_TIMEOUT", "HELPER_TIME_PER_NAME", "SHARING_MINIMUM", "FirstListing", "ParseSharing",
    "HelperListing", "SharedParse", "firstListing", "listInHelper", "worthSharing",
]

# From how many entries a first listing of cur/ is worth sharing: the
# helper takes some 25 ms to start and parses 5,000 names in about 5 ms.
# (A directory of at most SMALL_DIRECTORY octets holds fewer.)
SHARING_MINIMUM = 8192
SMALL_DIRECTORY = 32 * 1024
# The share of the names the helper parses: less than half, as it also
# decodes them and encodes what it parsed.
HELPER_SHARE = 0.40
# How long the helper may take to read its share and parse it, at most: a
# few seconds and a half millisecond per name (it takes about 65 ms for
# 40,000 names); then it is given up (a helper stopped, or wedged).
HELPER_TIMEOUT = 5.0
HELPER_TIME_PER_NAME = 0.0005
# (For a listing, from the directory's size: some 70 octets a name.)
HELPER_TIME_PER_OCTET = HELPER_TIME_PER_NAME / 70
# How long a killed helper is waited for (one stuck in the kernel is left
# to be reaped by the next wait).
KILL_WAIT = 5.0

# The names parsed, their POP3 order (indexes), and the names that record
# no POP3 size.
SharedParse = Tuple[Columns, "array.array[int]", List[str]]
# What a helper listed: the names parsed, their POP3 order, the names that
# record no POP3 size, and the names of the other entries.
HelperListing = Tuple[Columns, List[int], List[str], List[str]]
# A first listing: the names parsed, their POP3 order, the names that
# record no POP3 size, those of the entries that are not regular files, and
# why a helper did not do its part (or None).
FirstListing = Tuple[Columns, "array.array[int]", List[str], List[str], Optional[str]]


def firstListing(
    cur: Directory,
    accountEntries: Callable[[int], None],
    accountNames: Callable[[int], None],
    pause: Callable[[], None],
) -> FirstListing:
    """
    List and parse a big C{cur/} with a helper process: wholly in the
    helper if other sessions are logged in now (L{listInHelper}); else
    sharing the parse with one (L{ParseSharing}), handing it every name if
    others logged in while this session listed C{cur/}; by itself, for
    whatever a helper could not do.

    @param accountEntries: called with a number of directory entries about
        to be read here (to pace CPU work).
    @param accountNames: called with a number of names about to be parsed
        here.
    @param pause: called between steps (to let other threads run).
    """
    # (The caller's own Maildir is one of those open.)
    if OpenedMaildir.lockedCount() > 1:
        listed = listInHelper(cur, pause)
        if not isinstance(listed, str):
            parsed, order, unsized, others = listed
            return parsed, array.array("q", order), unsized, others, None
        # (Not a second helper: the first took long, maybe.)
        sharing = ParseSharing(start=False)
        problem: Optional[str] = listed
    else:
        sharing = ParseSharing()
        problem = None
    try:
        openings = OpenedMaildir.openings()
        names, others = cur.listFiles(accountEntries)
        share = HELPER_SHARE if OpenedMaildir.openings() == openings else 1.0
        parsed, sharedOrder, unsized = sharing.parse(names, accountNames, pause, share)
    finally:
        sharing.close()
    return parsed, sharedOrder, unsized, others, problem or sharing.problem


def listInHelper(cur: Directory, pause: Callable[[], None]) -> Union[HelperListing, str]:
    """
    List and parse C{cur/} wholly in a helper process, which inherits its
    descriptor; return the names parsed, their POP3 order, the names that
    record no POP3 size and those of the other entries, or why that failed
    (one line).
    """
    timeout = HELPER_TIMEOUT + cur.status().st_size * HELPER_TIME_PER_OCTET
    try:
        process = subprocess.Popen(
            helper.helperCommand(
                "list", cur.fileno(), os.getpid(), sys.getfilesystemencoding(), sys.getfilesystemencodeerrors(),
                CODE_DIGEST,
            ),
            pass_fds=(cur.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except OSError as error:
        return helper.startProblem(error)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return "the helper did not finish in time"
    finally:
        _end(process)
    if process.returncode != 0:
        return helper.exitProblem(process.returncode, err)
    parsed = Columns()
    try:
        order, unsized, others = helper.unpackListing(out, parsed, pause)
    except (ValueError, UnicodeDecodeError) as error:
        return f"the helper's listing is unusable: {error}"[:helper.PROBLEM_LENGTH]
    # (The helper broke the ties by the whole sort key too.)
    if not inTimeOrder(order, parsed.times.tolist(), pause):
        return "the helper's listing is not in the order of delivery"
    return parsed, order, unsized, others


def worthSharing(cur: Directory, status: os.stat_result) -> bool:
    """
    Whether C{cur/} has L{SHARING_MINIMUM} entries or more (its size,
    C{status}, tells when it has fewer, most of the time, without reading
    it).
    """
    return status.st_size > SMALL_DIRECTORY and cur.holdsAtLeast(SHARING_MINIMUM)


class ParseSharing:
    """
    A helper process, started at once, that will parse a share of the
    names given to L{parse}.

    @ivar problem: why the helper did not do its share (one line), if it
        did not.
    """

    def __init__(self, start: bool = True) -> None:
        """
        @param start: whether to start the helper (else the session will
            parse every name itself).
        """
        self.problem: Optional[str] = None
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._deadline = 0.0
        if not start:
            return
        try:
            self._process = subprocess.Popen(
                helper.helperCommand("parse", os.getpid(), CODE_DIGEST), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as error:
            self.problem = helper.startProblem(error)

    def parse(
        self,
        names: List[str],
        account: Callable[[int], None],
        pause: Callable[[], None],
        share: Optional[float] = None,
    ) -> SharedParse:
        """
        Parse C{names} (see L{popsrv.store.maildir.parsing.parseColumns}):
        the last C{share} of them (by default L{HELPER_SHARE}) in the
        helper, the others here meanwhile; return them parsed, in POP3
        order.

        @param account: called with a number of names about to be parsed
            here, for every L{ACCOUNT_STEP} of them (to pace CPU work).
        @param pause: called between the steps of sorting (to let other
            threads run).
        """
        fraction = HELPER_SHARE if share is None else share
        count = int(len(names) * fraction) if self._process is not None else 0
        mine, theirs = names[:len(names) - count], names[len(names) - count:]
        self._deadline = time.monotonic() + HELPER_TIMEOUT + count * HELPER_TIME_PER_NAME
        sent = self._send(theirs)
        columns = Columns()
        unsized = parseInSteps(mine, columns, ACCOUNT_STEP, account)
        order = sortedInSteps(columns.times.tolist(), [], pause)
        received = self._receive(theirs) if sent else None
        if received is None:
            self.close()
            unsized += parseInSteps(theirs, columns, ACCOUNT_STEP, account)
            times = columns.times.tolist()
            order = sortedInSteps(times, order, pause)
        else:
            parsed, theirOrder, theirUnsized = received
            first = len(columns)
            columns = Columns.joined(columns, parsed)
            times = columns.times.tolist()
            order = mergedInSteps(order, list(map(first.__add__, theirOrder)), times, pause)
            unsized += theirUnsized
        return columns, array.array("q", tiesBroken(order, times, columns.names, pause)), unsized

    def _send(self, names: List[str]) -> bool:
        """
        Hand the helper its share of the names, waiting at most until the
        deadline for it to take them; return whether it took them.
        """
        process = self._process
        if process is None or process.stdin is None:
            return False
        data = memoryview(helper.joined(names))
        fd = process.stdin.fileno()
        try:
            os.set_blocking(fd, False)
            writable = select.poll()
            writable.register(fd, select.POLLOUT)
            while data:
                try:
                    data = data[os.write(fd, data):]
                except BlockingIOError:
                    left = self._deadline - time.monotonic()
                    if left <= 0:
                        self.problem = "the helper took no names in time"
                        return False
                    writable.poll(left * 1000)
        except OSError as error:
            self.problem = f"the helper took no names: {error.strerror or error}"
            return False
        finally:
            process.stdin.close()
            # (Closed: communicate() must not flush it.)
            process.stdin = None
        return True

    def _receive(self, names: List[str]) -> Optional[Tuple[Columns, List[int], List[str]]]:
        """
        What the helper parsed of C{names}, once it is done; C{None} if it
        failed (see L{problem}).
        """
        process = self._process
        assert process is not None
        try:
            out, err = process.communicate(timeout=max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.problem = "the helper did not finish in time"
            return None
        if process.returncode != 0:
            self.problem = helper.exitProblem(process.returncode, err)
            return None
        parsed = Columns()
        try:
            order, unsized = helper.unpackParsed(out, names, parsed)
        except (ValueError, UnicodeDecodeError) as error:
            self.problem = f"the helper's names are unusable: {error}"[:helper.PROBLEM_LENGTH]
            return None
        if not inTimeOrder(order, parsed.times.tolist(), lambda: None):
            self.problem = "the helper's names are not in the order of delivery"
            return None
        return parsed, order, unsized

    def close(self) -> None:
        """
        Make sure the helper is gone (killed if it still runs) and reaped.
        """
        process, self._process = self._process, None
        if process is not None:
            _end(process)


def _end(process: subprocess.Popen[bytes]) -> None:
    """
    Make sure a helper is gone (killed if it still runs), reaped if it
    ends soon, and its pipes closed.
    """
    if process.poll() is None:
        process.kill()
        try:
            process.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            pass
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
