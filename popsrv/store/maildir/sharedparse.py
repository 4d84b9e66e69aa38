"""
The first listing of a big C{cur/} parsed on two cores: a share of the
names in a helper process (L{popsrv.store.maildir.helper}), the rest in the
session's thread, at the same time.

Parsing and sorting 100,000 names takes about 110 ms of CPU, and the whole
first listing (reading the directory, parsing, sorting, the snapshot)
about 230 ms: sharing the parse takes some 50 ms off, and off the
server's GIL.  The helper is started before the directory is read, so that
its start (some 25 ms) is not waited for.  Whatever goes wrong with it
(it cannot start, fails, or writes what cannot be read), the session
parses the helper's share itself, and L{ParseSharing.problem} says why.
"""

from __future__ import annotations

import array
import os
import select
import subprocess
import sys
import time
from typing import Callable, List, Optional, Tuple

from popsrv.store.maildir import helper
from popsrv.store.maildir.directory import Directory
from popsrv.store.maildir.listing import ACCOUNT_STEP
from popsrv.store.maildir.parsing import Columns, mergedInSteps, parseColumns, sortedInSteps, tiesBroken

__all__ = [
    "HELPER_SHARE", "HELPER_TIMEOUT", "HELPER_TIME_PER_NAME", "SHARING_MINIMUM", "ParseSharing", "SharedParse",
    "worthSharing",
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
# How much of what a failed helper wrote is kept.
PROBLEM_LENGTH = 200

# The names parsed, their POP3 order (indexes), and the names that record
# no POP3 size.
SharedParse = Tuple[Columns, "array.array[int]", List[str]]


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

    def __init__(self) -> None:
        self.problem: Optional[str] = None
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._deadline = 0.0
        try:
            self._process = subprocess.Popen(
                helper.helperCommand("parse", os.getpid()), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as error:
            self.problem = f"cannot start {sys.executable}: {error.strerror or error}"

    def parse(
        self, names: List[str], account: Callable[[int], None], pause: Callable[[], None]
    ) -> SharedParse:
        """
        Parse C{names} (see L{popsrv.store.maildir.parsing.parseColumns}):
        the last L{HELPER_SHARE} of them in the helper, the others here
        meanwhile; return them parsed, in POP3 order.

        @param account: called with a number of names about to be parsed
            here, for every L{ACCOUNT_STEP} of them (to pace CPU work).
        @param pause: called between the steps of sorting (to let other
            threads run).
        """
        share = int(len(names) * HELPER_SHARE) if self._process is not None else 0
        mine, theirs = names[:len(names) - share], names[len(names) - share:]
        self._deadline = time.monotonic() + HELPER_TIMEOUT + share * HELPER_TIME_PER_NAME
        sent = self._send(theirs)
        columns = Columns()
        unsized = _parsed(mine, columns, account)
        order = sortedInSteps(columns.times.tolist(), [], pause)
        received = self._receive(theirs) if sent else None
        if received is None:
            self.close()
            unsized += _parsed(theirs, columns, account)
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
            lines = err.decode("utf-8", "replace").strip().splitlines()
            self.problem = (lines[-1] if lines else f"exit status {process.returncode}")[:PROBLEM_LENGTH]
            return None
        parsed = Columns()
        try:
            order, unsized = helper.unpackParsed(out, names, parsed)
        except (ValueError, UnicodeDecodeError) as error:
            self.problem = f"the helper's names are unusable: {error}"[:PROBLEM_LENGTH]
            return None
        return parsed, order, unsized

    def close(self) -> None:
        """
        Make sure the helper is gone (killed if it still runs) and reaped.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _parsed(names: List[str], columns: Columns, account: Callable[[int], None]) -> List[str]:
    """
    Parse C{names} into C{columns} a step at a time; return those that
    record no POP3 size.
    """
    unsized: List[str] = []
    for start in range(0, len(names), ACCOUNT_STEP):
        batch = names[start:start + ACCOUNT_STEP]
        account(len(batch))
        unsized += parseColumns(batch, columns)
    return unsized
