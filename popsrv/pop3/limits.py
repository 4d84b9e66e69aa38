"""
Connection limits: how many connections the server holds at once, in all,
and from one client address (an IPv4 address, or an IPv6 /64).  The counts
live in the L{Scoreboard}, so they hold across C{--workers} processes.
"""

from __future__ import annotations

import resource
from typing import Optional

from twisted.internet.interfaces import ITransport
from twisted.logger import Logger

from popsrv.pop3 import replies
from popsrv.scoreboard import Row, Scoreboard, TableFull, addressKey

__all__ = ["DEFAULT_MAX_PER_ADDRESS", "ConnectionLimits", "defaultMaxConnections", "raiseDescriptorLimit"]

DEFAULT_MAX_PER_ADDRESS = 10
# Descriptors kept free for everything but sessions: listening sockets, log
# files, the thread pool's work, passwd files, a database connection.
RESERVED_DESCRIPTORS = 64
# Descriptors one logged-in session may hold at once: its socket, its
# Maildir's directories and lock, and the message it is sending.
DESCRIPTORS_PER_SESSION = 6
# The descriptor limit popsrv asks for at start, where the hard limit allows.
WANTED_DESCRIPTORS = 65536

log = Logger()


def raiseDescriptorLimit(wanted: int = WANTED_DESCRIPTORS) -> int:
    """
    Raise this process's soft limit on open descriptors towards C{wanted},
    as far as its hard limit allows; return the soft limit then in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else soft


def defaultMaxConnections(descriptors: int) -> int:
    """
    The default of C{--max-connections} for a process that may open
    C{descriptors} files: as many sessions as fit, each holding
    L{DESCRIPTORS_PER_SESSION}, after L{RESERVED_DESCRIPTORS}.
    """
    return max(1, (descriptors - RESERVED_DESCRIPTORS) // DESCRIPTORS_PER_SESSION)


class ConnectionLimits:
    """
    Admits or refuses each new connection.

    @ivar maxConnections: connections at once, in all (C{None}: no limit).
    @ivar maxPerAddress: connections at once from one address (C{None}: no
        limit).
    """

    def __init__(
        self, scoreboard: Scoreboard, maxConnections: Optional[int], maxPerAddress: Optional[int],
    ) -> None:
        self.scoreboard = scoreboard
        self.maxConnections = maxConnections
        self.maxPerAddress = maxPerAddress

    def admit(self, host: str, now: float) -> Optional[str]:
        """
        Count a new connection from C{host}, if the limits allow it.

        @return: C{None} if admitted (then call L{leave} when it closes),
            else why not: C{"server"} (the server is full) or C{"address"}
            (that address holds its share).
        """

        def change(row: Row) -> Optional[str]:
            if self.maxConnections is not None and row.everyone >= self.maxConnections:
                return "server"
            if self.maxPerAddress is not None and row.totalConnections >= self.maxPerAddress:
                return "address"
            row.connections[row.column] += 1
            return None

        try:
            return self.scoreboard.update(addressKey(host), now, change)
        except TableFull:
            # With four rows a connection, only near a full server: what
            # cannot be counted is not admitted.
            return "server"

    def enter(self, transport: ITransport, host: str, peer: str, now: float) -> bool:
        """
        Admit the connection of C{transport} from C{host} (C{peer}, for
        logs), or turn it away at once with one C{[SYS/TEMP]} line.

        @return: whether it was admitted (then call L{leave} when it closes).
        """
        refusal = self.admit(host, now)
        if refusal is None:
            return True
        log.info(
            "refused a connection from {peer}: too many connections from {limit}",
            peer=peer, limit="this address" if refusal == "address" else "everyone", reason=refusal,
            event="connection-refused",
        )
        transport.write(replies.TOO_MANY_CONNECTIONS)
        transport.loseConnection()
        return False

    def leave(self, host: str, now: float) -> None:
        """
        An admitted connection from C{host} closed.
        """

        def change(row: Row) -> None:
            row.connections[row.column] -= 1

        try:
            self.scoreboard.update(addressKey(host), now, change)
        except TableFull:  # pragma: no cover - its row holds this connection
            pass
