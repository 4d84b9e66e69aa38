"""
A worker's log: its events as JSON lines on a pipe to the parent, written a
batch at a time.

The parent (L{popsrv.app.workers}) decodes each line and publishes it in its
own log.  A pipe write per event woke the parent once per event, at about
three events per POP3 session; held for up to L{FLUSH_DELAY} seconds, the
events of many sessions reach the parent in one read.  An event of level
warn or above, or one logged outside the reactor's thread, is written at
once with those held before it, so the lines that matter most are never
the ones still held when a worker dies; the rest are written when the
worker stops.
"""

from __future__ import annotations

import os
import threading
from typing import Any, List, Optional

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import ILogObserver, LogEvent, LogLevel, eventAsJSON
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

__all__ = ["BATCH_OCTETS", "FLUSH_DELAY", "BatchingLineObserver"]

# How long an event of level info or below may wait for others.
FLUSH_DELAY = 0.02
# Held events are written once they take this many characters.
BATCH_OCTETS = 32768
_URGENT = (LogLevel.warn, LogLevel.error, LogLevel.critical)


@implementer(ILogObserver)
class BatchingLineObserver:
    """
    Writes each event as one JSON line to the file descriptor C{fd},
    holding events of level info and below for up to C{delay} seconds.

    @ivar writes: how many writes it made (for tests and benchmarks).
    """

    def __init__(self, reactor: Any, fd: int, delay: float = FLUSH_DELAY, limit: int = BATCH_OCTETS) -> None:
        self._reactor = reactor
        self._fd = fd
        self._delay = delay
        self._limit = limit
        # Reentrant: a signal handler may log while this thread writes.
        self._lock = threading.RLock()
        self._writing = False
        self._held: List[str] = []
        self._heldSize = 0
        self._call: Optional[IDelayedCall] = None
        self.writes = 0

    def __call__(self, event: LogEvent) -> None:
        line = eventAsJSON(event) + "\n"
        level = event.get("log_level")
        urgent = level in _URGENT or not isInIOThread()
        with self._lock:
            self._held.append(line)
            self._heldSize += len(line)
            if self._writing:
                # Logged while this thread writes (by a signal handler,
                # such as Twisted's on SIGTERM): the write in progress
                # takes it too.
                return
            if urgent or self._heldSize >= self._limit:
                self._writeHeld()
            elif self._call is None:
                self._call = self._reactor.callLater(self._delay, self.flush)

    def flush(self) -> None:
        """
        Write every held event now.
        """
        with self._lock:
            if not self._writing:
                self._writeHeld()

    def _writeHeld(self) -> None:
        """
        Write the held events, and those logged meanwhile; the lock is held.
        """
        call, self._call = self._call, None
        if call is not None and call.active() and isInIOThread():
            call.cancel()
        self._writing = True
        try:
            while self._held:
                data = "".join(self._held).encode("utf-8", "backslashreplace")
                self._held = []
                self._heldSize = 0
                self.writes += 1
                if not self._write(data):
                    self._held = []
                    return
        finally:
            self._writing = False

    def _write(self, data: bytes) -> bool:
        """
        Write C{data} whole; return whether the pipe still takes it.
        """
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError:
                # The parent is gone (EPIPE): the worker stops on its own
                # when its standard input ends; nothing can carry the log.
                return False
            view = view[written:]
        return True
