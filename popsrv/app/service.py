"""
The popsrv service: command-line options and C{makeService}, as used by
C{twistd popsrv}, and the pieces an application needs to embed popsrv.

Embedding needs only L{popsrv.pop3.protocol.POP3Factory} and a portal::

    portal = Portal(MaildirRealm("/var/mail"), [checker])
    endpoint = serverFromString(reactor, "tcp:1110:interface=127.0.0.1")
    ListeningService(endpoint, POP3Factory(portal)).setServiceParent(application)
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any, Callable, Optional, Sequence, Union

from twisted.application.service import IService, MultiService, Service
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorFromThreads, IStreamServerEndpoint
from twisted.logger import Logger

from popsrv.app.demo import prepareDemo
from popsrv.app.listening import ImplicitTLSEndpoint, ListeningService, describeAddress, serverEndpoint, splitTLS
from popsrv.app.options import DEMO_DIRECTORY, Options
from popsrv.app.privileges import RootWarning
from popsrv.app.secret import defaultStateDirectory, deriveKey, wipe
from popsrv.app.shutdown import GracefulShutdown
from popsrv.auth.penalty import AuthPenalty
from popsrv.auth.scram import setPlaceholderKey
from popsrv.interfaces import IReloadable
from popsrv.pop3.factory import POP3Factory
from popsrv.pop3.limits import ConnectionLimits, defaultMaxConnections, raiseDescriptorLimit
from popsrv.pop3.policy import LoginPolicy
from popsrv.scoreboard import CAPACITY, Scoreboard
from popsrv.store.realm import MaildirRealm, MaildirTemplate, MboxRealm
from popsrv.threads import threadRunner
from popsrv.tls import TLSSettings

__all__ = ["ListeningService", "Options", "PopsrvService", "ReloadOnHangup", "makeService"]

SWITCH_INTERVAL = 0.0005
# Seconds a worker has beyond the shutdown grace to exit before it is killed.
STOP_MARGIN = 2.0

log = Logger()


class ReloadOnHangup(Service):
    """
    Handles SIGHUP (C{systemctl reload}, a certificate renewal) while the
    service runs: reloads the TLS certificate and key, if there are any,
    and the checkers that can reload (L{IReloadable}: a C{pgsql:} settings
    file), and logs the reload; SIGHUP never stops the server.
    """

    def __init__(
        self, tls: Optional[TLSSettings], reactor: IReactorFromThreads, reloadable: Sequence[object] = (),
    ) -> None:
        self.tls = tls
        self.reloadable = [each for each in reloadable if IReloadable.providedBy(each)]
        self.reactor = reactor
        self._previous: Union[Callable[[int, Optional[FrameType]], Any], int, None] = None

    def privilegedStartService(self) -> None:
        """
        Take SIGHUP before any listener is up: one that came between the
        first connection and the service's start would stop the server.
        """
        super().privilegedStartService()
        if self._previous is None:
            self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def startService(self) -> None:
        super().startService()
        if self._previous is None:
            self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _hangup(self, signum: int, frame: Optional[FrameType]) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """
        Reload what can be reloaded.  (Passwd files are read again at the
        first login after they change, SIGHUP or not.)
        """
        log.info("SIGHUP: reloading", event="reload")
        if self.tls is not None:
            self.tls.reload()
        for each in self.reloadable:
            each.reload()


class PopsrvService(MultiService):
    """
    The popsrv service of C{twistd popsrv}: its children, and a port that
    cannot be bound stops the start with one line, not a traceback.
    """

    def privilegedStartService(self) -> None:
        """Start the children; a port that cannot be bound ends the start."""
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
            raise SystemExit(f"popsrv: cannot listen on {error.interface or '*'}:{error.port}: {reason}") from None


def makeService(
    options: Options,
    reactor: Any = None,
    endpointFor: Optional[Callable[[str], IStreamServerEndpoint]] = None,
    scoreboard: Optional[Scoreboard] = None,
) -> IService:
    """
    Build the popsrv service from parsed options: with C{--workers} above 1,
    the parent of the worker processes (L{popsrv.app.workers.WorkerPool}).

    @param endpointFor: makes the endpoint of a C{--listen} description
        (by default, L{serverEndpoint}: Twisted's, with a larger listen
        backlog for TCP); a worker gives its own,
        to adopt the sockets its parent bound.
    @param scoreboard: the L{Scoreboard} of connections and failed logins
        (a worker's, shared with its parent and siblings); by default, a new
        one.
    """
    if reactor is None:
        from twisted.internet import reactor
    # Maildir work in the thread pool (listing 100,000 messages) holds the
    # GIL in slices of the switch interval, and every GIL hand-back to the
    # reactor thread may wait that long: at CPython's default of 5 ms, a
    # small session that needs it a few dozen times waits 100 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)
    worker = endpointFor is not None
    if endpointFor is None:

        def endpointFor(description: str) -> IStreamServerEndpoint:
            return serverEndpoint(reactor, description)
    checkers = list(options["credCheckers"])
    template = options["maildir-template"]
    announce: Optional[Callable[[IListeningPort], None]] = None
    if options["demo"]:
        demo = prepareDemo(DEMO_DIRECTORY)
        demoChecker = InMemoryUsernamePasswordDatabaseDontUse()
        demoChecker.addUser(demo.user.encode("utf-8"), demo.password.encode("utf-8"))
        checkers.append(demoChecker)
        root = demo.maildirRoot
        template = MaildirTemplate.forRoot(root)

        def announce(port: IListeningPort) -> None:
            address = port.getHost()
            host = getattr(address, "host", "127.0.0.1")
            if host in ("0.0.0.0", "::"):
                host = "127.0.0.1"
            if ":" in host:
                host = f"[{host}]"
            url = f"pop3://{host}:{getattr(address, 'port', 110)}/1"
            log.info(
                "popsrv demo: user {user!r}, password {password!r}, Maildir {maildir}\n"
                "Fetch message 1 with:\n\n    curl {url} -u {user}:{password}\n",
                user=demo.user, password=demo.password, url=url,
                maildir=os.path.join(root, demo.user), event="demo",
            )

        if worker:
            announce = None
    if options.get("secret") is not None:
        # (Workers get the key from their parent, through the environment.)
        setPlaceholderKey(deriveKey(options["secret"], "scram-placeholder-salts"))
        if options["workers"] > 1 and isinstance(options["secret"], bytearray):
            # Nothing else needs it: the workers, forked from this process,
            # shall not hold it.
            wipe(options["secret"])
            options["secret"] = None
    descriptors = raiseDescriptorLimit()
    maxConnections = options["max-connections"] or defaultMaxConnections(descriptors)
    if scoreboard is None:
        scoreboard = Scoreboard.create(columns=options["workers"] if not worker else 1,
                                       capacity=_capacityFor(maxConnections), shared=options["workers"] > 1)
    # The metrics are served by this process, or by the parent of the
    # workers, which counts their sessions from the events they relay.
    metrics: Optional[IService] = None
    if options["metrics"] is not None and not worker:
        from popsrv.app.metricsweb import MetricsService

        metrics = MetricsService(endpoints.serverFromString(reactor, options["metrics"]))
    if options["workers"] > 1 and not worker:
        return _workerPool(options, reactor, announce, scoreboard, metrics)
    realm: Union[MaildirRealm, MboxRealm]
    if options["mbox-template"] is not None:
        realm = MboxRealm(options["mbox-template"], defaultStateDirectory(), runner=threadRunner(reactor))
    else:
        realm = MaildirRealm(template=template, runner=threadRunner(reactor), uidlFormat=options["uidl-format"])
    portal = Portal(realm, checkers)
    factory = POP3Factory(
        portal,
        hostname=options["hostname"],
        timeout=options["timeout"],
        clock=reactor,
        tls=options["tls"],
        policy=LoginPolicy(options["plaintext-auth"], options["login-delay"]),
        expire=options["expire"],
        loginTimeout=options["login-timeout"],
        limits=ConnectionLimits(scoreboard, maxConnections, options["max-connections-per-ip"]),
        penalty=AuthPenalty(scoreboard),
        saslMechanisms=options["sasl-mechanisms"],
        timeCommands=options["metrics"] is not None,
    )
    log.info(
        "serving at most {maxConnections} connections, {perAddress} from one address",
        maxConnections=maxConnections, perAddress=options["max-connections-per-ip"] or "any number",
        event="limits",
    )
    service = PopsrvService()
    if metrics is not None:
        # First: it watches the log before any connection comes.
        metrics.setServiceParent(service)
    # (A worker's parent passes SIGHUP on to it.)
    ReloadOnHangup(options["tls"], reactor, checkers).setServiceParent(service)
    for description in options["listen"]:
        inner, implicitTLS = splitTLS(description)
        endpoint = endpointFor(inner)
        if implicitTLS:
            endpoint = ImplicitTLSEndpoint(endpoint, options["tls"])
        _listener(endpoint, factory, announce).setServiceParent(service)
    # Stopping stops every child at once: the listeners close while this
    # waits for the sessions.
    GracefulShutdown([factory], reactor, options["shutdown-grace"]).setServiceParent(service)
    if not worker:
        # Workers have their parent's identity: the parent warns for them.
        RootWarning().setServiceParent(service)
    return service


def _listener(
    endpoint: IStreamServerEndpoint, factory: POP3Factory, announce: Optional[Callable[[IListeningPort], None]],
) -> ListeningService:
    """
    The service of one C{--listen} endpoint: its connections are named in
    the log (and in the metrics) by the address it listens on.
    """
    listenerFactory = factory.forListener("-")

    def listening(port: IListeningPort) -> None:
        listenerFactory.listener = describeAddress(port.getHost())
        if announce is not None:
            announce(port)

    return ListeningService(endpoint, listenerFactory, listening)


def _capacityFor(maxConnections: int) -> int:
    """
    The scoreboard's size for a server of C{maxConnections}: the default,
    or the power of two that holds four rows for each connection.
    """
    capacity = CAPACITY
    while capacity < 4 * maxConnections:
        capacity *= 2
    return capacity


def _workerPool(
    options: Options, reactor: Any, announce: Optional[Callable[[IListeningPort], None]], scoreboard: Scoreboard,
    metrics: Optional[IService],
) -> IService:
    """
    The service of a parent process: it binds the listening sockets and runs
    the workers, which serve them with the same options and share its
    scoreboard; and serves the metrics, if asked.
    """
    from popsrv.app.workers import WorkerPool

    service = PopsrvService()
    if metrics is not None:
        # First: it watches the log before the first worker starts.
        metrics.setServiceParent(service)
    pool = WorkerPool(
        reactor, options["listen"], options.arguments, options["workers"], announce, scoreboard=scoreboard,
        stopGrace=options["shutdown-grace"] + STOP_MARGIN,
        # The workers keep the mbox state where this process would: they
        # may run as another user, whose default differs.
        environment={"STATE_DIRECTORY": defaultStateDirectory()},
        fork=not options["spawn-workers"],
    )
    pool.setServiceParent(service)
    RootWarning(options["workers"]).setServiceParent(service)
    return service
