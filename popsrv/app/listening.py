"""
Listening on the endpoints of C{--listen}: L{ListeningService}, and how a
listening address is written in the log.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["ListeningService", "describeAddress"]

log = Logger()


def describeAddress(address: object) -> str:
    """
    Return a listening address as C{host:port} (or a path for UNIX sockets).
    """
    if hasattr(address, "port"):
        host = str(getattr(address, "host", ""))
        port = address.port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(getattr(address, "name", address))


class ListeningService(Service):
    """
    Listens on one endpoint while the service runs.

    Listening starts in C{privilegedStartService}, before twistd drops root,
    so privileged ports work; a failure to listen is raised at once, so a
    busy port stops C{twistd} with a clear error.

    (Not Twisted's C{StreamServerEndpointService}: popsrv logs the address
    it bound, port 0 resolved, and hands the port to C{onListening} for the
    demo's instructions and the worker pool; that service keeps its port
    only in a private Deferred.)

    @ivar port: the C{IListeningPort} once listening.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: Factory,
        onListening: Optional[Callable[[IListeningPort], None]] = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: Optional[IListeningPort] = None
        self._onListening = onListening
        self._waiting: Optional[Deferred[IListeningPort]] = None

    def privilegedStartService(self) -> None:
        """
        Start listening.
        """
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """
        Start listening, unless already listening.
        """
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._waiting is not None:
            return
        self._waiting = self.endpoint.listen(self.factory)
        failures: List[Failure] = []
        self._waiting.addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()
        if not self._waiting.called:
            # A failure that comes later cannot stop the start any more;
            # log it for the operator.
            self._waiting.addErrback(lambda failure: log.failure("could not listen", failure))

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = describeAddress(port.getHost())
        log.info("popsrv listening on {address}", address=address, event="listening")
        if self._onListening is not None:
            self._onListening(port)

    def stopService(self) -> Optional[Deferred[None]]:
        """
        Stop listening.
        """
        super().stopService()
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.called:
            waiting.cancel()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


