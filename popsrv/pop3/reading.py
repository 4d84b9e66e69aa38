"""
L{ReadControl}: when a POP3 connection reads from its client.

The next command is taken only when the last one is done and the client
reads its replies; a command in progress (an AUTH exchange) may ask for the
client's next line itself.  So any number of pipelined commands get complete
replies in order, and a client that does not read cannot grow our memory.

While a command is in progress (a login waiting for its turn, a message
being read), the client's next lines are held but the socket is still read,
up to L{HOLD_OCTETS}: so a client that leaves is noticed at once (its login
is dropped unchecked, its place within the connection limits freed), not
when the command ends.  Past that, and whenever the client does not read
its replies, the socket is not read at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer

if TYPE_CHECKING:  # pragma: no cover
    from twisted.protocols.basic import LineReceiver

    from popsrv.pop3.sending import ReadGate

__all__ = ["HOLD_OCTETS", "ReadControl"]

HOLD_OCTETS = 16384


class ReadControl:
    """
    Pauses and resumes reading from the client as the session requires.

    @param receiver: the protocol that reads lines (its C{paused} flag,
        C{dataReceived} and C{transport} are LineReceiver's public API).
    @param gone: whether the connection is closed or closing.
    @ivar gate: the connection's read gate once it has one: while it is
        blocked (the client's replies pile up), nothing is read.
    """

    def __init__(self, receiver: LineReceiver, gone: Callable[[], bool]) -> None:
        self._receiver = receiver
        self._gone = gone
        self.gate: Optional[ReadGate] = None
        self._waiting = False
        self._lineWaiter: Optional[defer.Deferred[Optional[bytes]]] = None
        self._held = 0
        self._socketPaused = False

    def received(self, octets: int) -> None:
        """
        The client sent C{octets} more: while lines are held, count them,
        and stop reading once too many wait.
        """
        if self._receiver.paused:
            self._held += octets
            if self._held > HOLD_OCTETS and not self._socketPaused:
                self.update()

    def update(self) -> None:
        """
        Pause or resume reading as the command in progress and the client's
        reading require.
        """
        if self._gone():
            return
        gate = self.gate
        blocked = gate is not None and gate.blocked
        hold = self._waiting or blocked
        pauseSocket = blocked or (self._waiting and self._held > HOLD_OCTETS)
        receiver = self._receiver
        transport = receiver.transport
        if pauseSocket != self._socketPaused and transport is not None:
            self._socketPaused = pauseSocket
            if pauseSocket:
                transport.pauseProducing()  # type: ignore[attr-defined]
            else:
                transport.resumeProducing()  # type: ignore[attr-defined]
        if hold and not receiver.paused:
            receiver.paused = True
        elif not hold and receiver.paused:
            receiver.paused = False
            self._held = 0
            receiver.dataReceived(b"")

    def commandStarted(self, result: defer.Deferred[Any]) -> None:
        """
        A command returned C{result}: until it fires, read nothing more,
        unless the command itself waits for the client's next line.
        """
        if not result.called:
            self._waiting = self._lineWaiter is None
            self.update()
            result.addBoth(self._commandDone)

    def _commandDone(self, result: object) -> object:
        self._waiting = False
        self.update()
        return result

    def readLine(self) -> defer.Deferred[Optional[bytes]]:
        """
        The client's next line, for the command in progress (C{None} if the
        connection is lost first).
        """
        waiter: defer.Deferred[Optional[bytes]] = defer.Deferred()
        self._lineWaiter = waiter
        self._waiting = False
        self.update()
        return waiter

    def lineArrived(self, line: bytes) -> bool:
        """
        Give C{line} to the command in progress that asked for it, if one
        did (then read nothing more until it says what comes next).

        @return: whether the line was taken.
        """
        waiter, self._lineWaiter = self._lineWaiter, None
        if waiter is None:
            return False
        self._waiting = True
        self.update()
        waiter.callback(line)
        return True

    def connectionLost(self) -> None:
        """
        The connection is gone: a command waiting for a line gets C{None}.
        """
        waiter, self._lineWaiter = self._lineWaiter, None
        if waiter is not None:
            waiter.callback(None)
