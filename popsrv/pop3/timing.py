"""
How long a session's commands take: L{CommandTimes} keeps, for each
command, a count, a sum and the buckets of a histogram, so a session's whole
record is a few numbers however many commands it runs.  It is logged once,
in the session's C{session-end} event (as C{commands}), where
L{popsrv.app.metrics} adds it to the server's command latency histogram,
from every C{--workers} process alike.

Not one log event per command: measured in one process
(C{benchmarks/command_timing.py}: STAT after STAT over an in-memory
transport), a command costs popsrv 3.7 us; one more log event would cost
21 us in a worker (JSON, then the pipe to its parent) and 22 us more in the
parent that decodes and publishes it, ten times the command itself, and
the log would carry a line per command.  Timing it here costs 0.6 us, and
nothing unless the factory asks for it (C{timeCommands}, set by
C{--metrics}).  The price: a session's commands
are counted when it ends, and those of a worker killed mid-session are
lost.
"""

from __future__ import annotations

import bisect
from typing import Any, Dict, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from popsrv.pop3.commands import COMMANDS

__all__ = ["COMMAND_SECONDS_BUCKETS", "OTHER_COMMAND", "CommandTimes", "bucketName", "commandName"]

# The upper bounds of the buckets, in seconds; one more bucket, "+Inf",
# holds the longer ones.
COMMAND_SECONDS_BUCKETS: Tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# The name of every line that is not a known command.
OTHER_COMMAND = "other"

_NAMES = {name: name.decode("ascii") for name in COMMANDS}


def bucketName(bound: float) -> str:
    """
    A bucket's upper bound as a summary names it: C{"0.0005"}, C{"10"},
    C{"+Inf"}.
    """
    return "+Inf" if bound == float("inf") else f"{bound:g}"


_BUCKET_NAMES = [bucketName(bound) for bound in COMMAND_SECONDS_BUCKETS] + ["+Inf"]


def commandName(line: bytes) -> str:
    """
    The name a command line is counted under: its keyword in upper case if
    it is a POP3 command popsrv knows, else L{OTHER_COMMAND} (so what a
    client sends never becomes a name of its own).
    """
    return _NAMES.get(line.partition(b" ")[0].upper(), OTHER_COMMAND)


class CommandTimes:
    """
    The durations of one session's commands, by command name.
    """

    def __init__(self) -> None:
        # name -> [count, sum, bucket 0, ..., bucket +Inf]
        self._commands: Dict[str, List[Union[int, float]]] = {}

    def record(self, command: str, seconds: float) -> None:
        """
        Count one C{command} that took C{seconds}.
        """
        entry = self._commands.get(command)
        if entry is None:
            entry = self._commands[command] = [0, 0.0] + [0] * len(_BUCKET_NAMES)
        entry[0] += 1
        entry[1] += seconds
        entry[2 + bisect.bisect_left(COMMAND_SECONDS_BUCKETS, seconds)] += 1

    def timed(self, line: bytes, started: float, clock: IReactorTime, result: Optional[Deferred[Any]]) -> None:
        """
        Record the command of C{line}, begun at C{started}: now if it is
        done (C{result} is C{None}), else when C{result} fires (for a
        login, that includes the checker, the penalty, the pause before a
        failure is answered, and an AUTH exchange's round trips).  Call it
        before anything that may run the next pipelined command.
        """
        name = commandName(line)
        if result is None:
            self.record(name, clock.seconds() - started)
            return

        def done(value: object) -> object:
            self.record(name, clock.seconds() - started)
            return value

        result.addBoth(done)

    def summary(self) -> Dict[str, Dict[str, object]]:
        """
        The record, for a log event (JSON as it is): for each command run,
        C{count}, C{sum} (seconds) and C{buckets}, the commands of each
        bucket by its upper bound (L{bucketName}), leaving out the empty
        ones.
        """
        return {
            name: {
                "count": entry[0],
                "sum": entry[1],
                "buckets": {bucket: count for bucket, count in zip(_BUCKET_NAMES, entry[2:]) if count},
            }
            for name, entry in self._commands.items()
        }
