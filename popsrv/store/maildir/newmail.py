"""
Taking new mail into C{cur/} at login, each message measured once and
renamed with its sizes (see L{popsrv.store.maildir.intake}): in the calling
thread, paced by a L{GILPacer}, and for a big C{new/} first in a helper
process (L{popsrv.store.maildir.helper}).

Why a helper process: taking a message is half a dozen system calls, and a
thread of the server releases the GIL for each and has to win it back from
the reactor thread after each.  Measured on 100,000 new messages with
another client's sessions running meanwhile: 7.6 to 9.2 s in a thread,
3.3 to 4.4 s in a helper process, whose start costs about 20 ms.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple, Union

from popsrv.store.maildir import helper, intake
from popsrv.store.maildir.directory import Directory
from popsrv.wire.framing import normalizedSize

__all__ = [
    "ENTRY_WORK", "HELPER_MINIMUM", "NAME_WORK", "GILPacer", "deliverNew", "helperCommand", "recordSize",
    "takeInHelper",
]

ENTRY_WORK = intake.ENTRY_WORK
NAME_WORK = intake.NAME_WORK
# From how many entries in new/ a helper process takes them first.
HELPER_MINIMUM = 1024


class GILPacer:
    """
    Gives up the GIL after every C{every} octets of CPU-bound work.

    Measuring holds the GIL; in a worker thread, the reactor thread would
    otherwise wait up to the switch interval each of the many times it
    needs the GIL back (the "convoy effect").  Yielding per file instead
    would cost a thread switch per small message.
    """

    def __init__(self, every: int = intake.MEASURE_CHUNK) -> None:
        self._every = every
        self._done = 0

    def account(self, octets: int) -> None:
        """Count C{octets} of work; yield the GIL once enough is done."""
        self._done += octets
        if self._done >= self._every:
            self._done = 0
            time.sleep(0)


def recordSize(directory: Directory, fileName: str, target: str, cur: Directory, pacer: GILPacer) -> Optional[str]:
    """
    Measure a message in C{directory} if need be and rename it into C{cur}
    as C{target} with its sizes in the name; return the new name (C{None}
    if it vanished or is not a regular file).  See
    L{popsrv.store.maildir.intake.takeMessage}.

    @raise OSError: it cannot be read, or renamed (its name with the sizes
        is too long).
    """
    return intake.takeMessage(directory.fileno(), fileName, target, cur.fileno(), normalizedSize, pacer.account)


def helperCommand(new: Directory, cur: Directory) -> List[str]:
    """
    The command that runs a helper process (L{popsrv.store.maildir.helper})
    taking C{new/} into C{cur/}, given the two directories' descriptors (to
    be passed to it) and this process's id.
    """
    return helper.helperCommand("take", new.fileno(), cur.fileno(), os.getpid())


def _runHelper(command: List[str], fds: Sequence[int]) -> Union[bytes, str]:
    """
    Run a helper process, which inherits C{fds}; return what it wrote on
    its standard output once it is done, or why it failed (one line).
    """
    if not sys.executable:
        return "no Python interpreter to run a helper with"
    try:
        done = subprocess.run(
            command, pass_fds=tuple(fds), stdin=subprocess.DEVNULL, capture_output=True, check=False,
        )
    except OSError as error:
        return helper.startProblem(error)
    if done.returncode == 0:
        return done.stdout
    return helper.exitProblem(done.returncode, done.stderr)


def takeInHelper(new: Directory, cur: Directory) -> Optional[str]:
    """
    Take C{new/} into C{cur/} in a helper process (see L{helperCommand}),
    which inherits the two directories' descriptors and stops if this
    process dies; return C{None} once it is done, or why it failed (one
    line).
    """
    done = _runHelper(helperCommand(new, cur), (new.fileno(), cur.fileno()))
    return done if isinstance(done, str) else None


def deliverNew(
    new: Directory, cur: Directory, pacer: GILPacer, mayUseHelper: bool = False
) -> Tuple[List[str], List[Tuple[str, str]], Optional[str]]:
    """
    Move every message in C{new/} to C{cur/}, recording its sizes: first in
    a helper process if C{new/} holds L{HELPER_MINIMUM} entries or more
    and C{mayUseHelper}, then, for whatever is left (everything, if the
    helper failed), here.

    @return: the names in C{new/} that are not regular files; those of the
        files that could not be taken (unreadable, or a name too long for
        the sizes), with why (all are left where they are); and why the
        helper failed, or C{None}.
    """
    problem = None
    if mayUseHelper and new.holdsAtLeast(HELPER_MINIMUM):
        problem = takeInHelper(new, cur)
    others, unusable = intake.takeNew(new.fileno(), cur.fileno(), normalizedSize, pacer.account)
    return others, unusable, problem
