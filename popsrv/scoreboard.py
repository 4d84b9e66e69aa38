"""
A small table of per-client-address figures shared by every process of one
server: open connections (for the connection limits) and failed logins (for
the authentication penalty).

The table lives in a file mapped into memory (C{mmap}), so the C{--workers}
processes share it: the parent makes it and hands its descriptor to each
worker.  Every read-modify-write holds an C{fcntl} lock on the file for a
few microseconds: no process ever sees half an update.  A process writes
only its own column of a row (and the row's shared fields: its address,
its failures), so no update can undo another process's count.

A process that stops while it holds the lock (C{SIGSTOP}, a debugger)
would stop every other process's next connection with it.  So a process
waits at most L{LOCK_PATIENCE} for the lock, then goes on without it, and
logs why; for L{LOCK_RESPITE} after that it waits only a moment
(L{RESPITE_PATIENCE}).  Without the lock, two processes may update a row's
failures at the same moment (one failure is not counted), or take the same
free row for two new addresses (one address's connections then count for
the other until they close): a few counts off, rather than a server that
stops serving.

It is bounded: rows are grouped in sets of L{WAYS}, and an address can live
only in the set a keyed hash of it chooses (a set-associative cache, as in a
CPU).  A new address takes a free row of its set, else the least recently
seen row that holds no connection: so the table forgets the quiet addresses
first, and an attacker cannot choose which set its addresses fall in.

Connections are counted per process (one column each), so that a process
that dies can have its column cleared (L{Scoreboard.clearColumn}) without
disturbing the others' counts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import ipaddress
import mmap
import os
import secrets
import struct
import tempfile
import time
from typing import Callable, Iterator, Optional, TypeVar

import attr
from twisted.logger import Logger

__all__ = [
    "CAPACITY", "LOCK_PATIENCE", "LOCK_RESPITE", "RESPITE_PATIENCE", "WAYS", "Row", "Scoreboard", "TableFull",
    "addressKey",
]

log = Logger()

_T = TypeVar("_T")

# Rows in the table, and rows per set.
CAPACITY = 65536
WAYS = 8

_MAGIC = b"popsrv-scoreboard-1\0"
# Header: magic, capacity, columns, hash key; then one total per column.
_HEADER = struct.Struct("<20sII16s")
# Row: key, last seen, penalty slot, last failure, failures; then per column
# the connections and the logins pending.
_ROW = struct.Struct("<16sdddI")
_COLUMN = struct.Struct("<II")
_TOTAL = struct.Struct("<I")
_EMPTY_KEY = b"\0" * 16
# How long an update waits for the lock that another process holds before
# it goes on without it; then for how long updates wait only a moment.
LOCK_PATIENCE = 0.2
LOCK_RESPITE = 10.0
RESPITE_PATIENCE = 0.002
# The first pause between two tries to take the lock, and the longest.
_FIRST_PAUSE = 0.0001
_LONGEST_PAUSE = 0.01
# What taking a lock that another process holds fails with.
_BUSY = (errno.EACCES, errno.EAGAIN)


@functools.lru_cache(maxsize=4096)
def addressKey(host: str) -> bytes:
    """
    The table key of a client's address: an IPv4 address (also when mapped
    into IPv6), or the /64 network of an IPv6 address (one host usually
    holds a whole /64); any other peer (a UNIX socket) shares one key.
    """
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return b"\1" + b"\0" * 15
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            return b"\6" + ip.packed[:8] + b"\0" * 7
    return b"\4" + ip.packed + b"\0" * 11


class TableFull(Exception):
    """
    The rows an address may use all hold live connections or logins.
    """


@attr.s(slots=True, auto_attribs=True)
class Row:
    """
    The figures of one address, as an update sees and changes them.

    @ivar connections: open connections, per process.
    @ivar pending: logins being verified, per process.
    @ivar column: this process's column.
    @ivar everyone: connections open in every process, from every address.
    """

    lastSeen: float
    slot: float
    lastFailure: float
    failures: int
    connections: list[int]
    pending: list[int]
    column: int
    everyone: int = 0

    @property
    def totalConnections(self) -> int:
        """Connections from this address, in every process."""
        return sum(self.connections)

    @property
    def totalPending(self) -> int:
        """Logins being verified for this address, in every process."""
        return sum(self.pending)

    @property
    def idle(self) -> bool:
        """Whether the row holds nothing worth keeping."""
        return not self.totalConnections and not self.totalPending and not self.failures


class Scoreboard:
    """
    The shared table.  Make it with L{create} (in the process that starts
    the others, or the only one), or L{attach} to one a parent made.

    @ivar column: the column of this process's connections.
    """

    def __init__(self, fd: int, column: int, shared: bool = True) -> None:
        self._fd = fd
        # One process alone uses it: no lock to take.
        self._shared = shared
        # Until when updates do not wait for the lock (see LOCK_RESPITE).
        self._impatientUntil = 0.0
        self._map = mmap.mmap(fd, 0)
        magic, capacity, columns, key = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC:
            raise ValueError("not a popsrv scoreboard")
        if not 0 <= column < columns:
            raise ValueError(f"column {column} of a scoreboard of {columns}")
        self.column = column
        self.columns = columns
        self._capacity: int = capacity
        self._sets: int = capacity // WAYS
        self._key: bytes = key
        self._totals = _HEADER.size
        self._rows = self._totals + _TOTAL.size * columns
        self._rowSize = _ROW.size + _COLUMN.size * columns

    @classmethod
    def create(
        cls, columns: int = 1, capacity: int = CAPACITY, directory: Optional[str] = None, shared: bool = True
    ) -> Scoreboard:
        """
        Make a new, empty table in an unlinked temporary file, for
        C{columns} processes; this process uses column 0.

        @param shared: whether other processes will use it (L{attach}): a
            table this process alone uses needs no lock.
        """
        if capacity % WAYS or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two and a multiple of {WAYS}")
        fd, path = tempfile.mkstemp(prefix="popsrv-scoreboard-", dir=directory)
        os.unlink(path)
        size = _HEADER.size + _TOTAL.size * columns + (_ROW.size + _COLUMN.size * columns) * capacity
        os.ftruncate(fd, size)
        os.pwrite(fd, _HEADER.pack(_MAGIC, capacity, columns, secrets.token_bytes(16)), 0)
        return cls(fd, 0, shared)

    @classmethod
    def attach(cls, fd: int, column: int) -> Scoreboard:
        """
        Use the table behind C{fd} (inherited from the process that made
        it), with column C{column}.
        """
        return cls(fd, column)

    def fileno(self) -> int:
        """The descriptor to hand to another process."""
        return self._fd

    def close(self) -> None:
        """Unmap the table and close its descriptor."""
        self._map.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """
        Hold the lock of the table, if it is shared, while the block runs:
        or not, if another process holds it too long (see the module's
        description).
        """
        held = self._shared and self._take()
        try:
            yield
        finally:
            if held:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _take(self) -> bool:
        """
        Take the lock, waiting at most L{LOCK_PATIENCE}; return whether it
        is taken.
        """
        pause = _FIRST_PAUSE
        deadline: Optional[float] = None
        impatient = False
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as error:
                if error.errno not in _BUSY:
                    raise
            now = time.monotonic()
            if deadline is None:
                impatient = now < self._impatientUntil
                deadline = now + (RESPITE_PATIENCE if impatient else LOCK_PATIENCE)
            elif now >= deadline:
                if impatient:
                    return False
                self._impatientUntil = now + LOCK_RESPITE
                log.warn(
                    "another process held the scoreboard's lock for {patience} s: going on without it for "
                    "{respite} s", patience=LOCK_PATIENCE, respite=LOCK_RESPITE, event="scoreboard-lock-held",
                )
                return False
            time.sleep(pause)
            pause = min(2 * pause, _LONGEST_PAUSE)

    # Totals

    def total(self) -> int:
        """Connections open in every process."""
        with self._locked():
            return self._total()

    def _total(self) -> int:
        return sum(_TOTAL.unpack_from(self._map, self._totals + _TOTAL.size * c)[0] for c in range(self.columns))

    def _addTotal(self, change: int) -> None:
        offset = self._totals + _TOTAL.size * self.column
        (value,) = _TOTAL.unpack_from(self._map, offset)
        _TOTAL.pack_into(self._map, offset, value + change)

    # Rows

    def _setOf(self, key: bytes) -> int:
        digest = hashlib.blake2b(key, digest_size=8, key=self._key).digest()
        sets: int = self._sets
        return int.from_bytes(digest, "little") % sets

    def _read(self, offset: int) -> tuple[bytes, Row]:
        key, lastSeen, slot, lastFailure, failures = _ROW.unpack_from(self._map, offset)
        connections, pending = [], []
        for c in range(self.columns):
            count, waiting = _COLUMN.unpack_from(self._map, offset + _ROW.size + _COLUMN.size * c)
            connections.append(count)
            pending.append(waiting)
        return key, Row(lastSeen, slot, lastFailure, failures, connections, pending, self.column)

    def _write(self, offset: int, key: bytes, row: Row) -> None:
        """
        Store the shared fields of a row and this process's column (the
        others are other processes' to write).
        """
        _ROW.pack_into(self._map, offset, key, row.lastSeen, row.slot, row.lastFailure, row.failures)
        column = self.column
        _COLUMN.pack_into(
            self._map, offset + _ROW.size + _COLUMN.size * column, row.connections[column], row.pending[column]
        )

    def _find(self, key: bytes, create: bool) -> Optional[tuple[int, Row]]:
        """
        The offset and row of C{key}: its own, else (if C{create}) a free or
        forgettable row of its set, made new; C{None} when there is none.
        """
        first = self._rows + self._setOf(key) * WAYS * self._rowSize
        victim: Optional[int] = None
        victimSeen = 0.0
        for way in range(WAYS):
            offset = first + way * self._rowSize
            found, row = self._read(offset)
            if found == key:
                return offset, row
            # An empty row is the best victim; else the quiet row seen
            # least recently.
            seen = -1.0 if found == _EMPTY_KEY else row.lastSeen
            if row.totalConnections or row.totalPending:
                continue
            if victim is None or seen < victimSeen:
                victim, victimSeen = offset, seen
        if victim is None or not create:
            return None
        zeros = [0] * self.columns
        return victim, Row(0.0, 0.0, 0.0, 0, list(zeros), list(zeros), self.column)

    def update(self, key: bytes, now: float, change: Callable[[Row], _T]) -> _T:
        """
        Apply C{change} to the row of C{key} under the lock, store what it
        changed, and return what it returned.

        @raise TableFull: every row the address may use holds live
            connections or logins (nothing is changed).
        """
        with self._locked():
            found = self._find(key, create=True)
            if found is None:
                raise TableFull(f"no row free for {key.hex()}")
            offset, row = found
            row.everyone = self._total()
            mine = row.connections[self.column]
            result = change(row)
            row.lastSeen = now
            row.connections = [max(0, count) for count in row.connections]
            row.pending = [max(0, count) for count in row.pending]
            self._write(offset, key, row)
            self._addTotal(row.connections[self.column] - mine)
            return result

    def peek(self, key: bytes) -> Optional[Row]:
        """
        The row of C{key}, if the table has one (a copy: changing it
        changes nothing).
        """
        with self._locked():
            found = self._find(key, create=False)
            return None if found is None else found[1]

    def clearColumn(self, column: int) -> None:
        """
        Forget the connections and pending logins of the process of
        C{column} (it ended: nothing it counted is open any more).

        Without the lock: the column is the ended process's, which no other
        process writes, and sweeping a big table takes longer than
        L{LOCK_PATIENCE}.
        """
        total = self._totals + _TOTAL.size * column
        counted = _TOTAL.unpack_from(self._map, total)[0] != 0
        _TOTAL.pack_into(self._map, total, 0)
        # Only cells that are not zero are written; and where the column
        # counted nothing, only rows in the file's data are swept (the rest
        # is holes, which read as zeros): the sweep of a fresh table
        # touches none of its pages.  (A column that counted connections
        # is swept whole, not trusting every file system's holes.)
        regions = [(0, len(self._map))] if counted else self._dataRegions()
        for start, end in regions:
            first = max(0, (start - self._rows) // self._rowSize)
            last = min(self._capacity, -(-(end - self._rows) // self._rowSize))
            for index in range(first, last):
                cell = self._rows + index * self._rowSize + _ROW.size + _COLUMN.size * column
                if _COLUMN.unpack_from(self._map, cell) != (0, 0):
                    _COLUMN.pack_into(self._map, cell, 0, 0)

    def _dataRegions(self) -> Iterator[tuple[int, int]]:
        """
        The regions of the table's file that hold data (not holes), as
        (start, end) offsets; the whole file where the file system cannot
        tell.
        """
        size = len(self._map)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(self._fd, offset, os.SEEK_DATA)
                end = os.lseek(self._fd, start, os.SEEK_HOLE)
            except OSError as error:
                if error.errno == errno.ENXIO:
                    return
                yield offset, size
                return
            yield start, min(end, size)
            offset = end
