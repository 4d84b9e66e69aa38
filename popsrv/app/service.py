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
from typing import Callable, Optional

from twisted.application.service import IService, MultiService, Service
from twisted.cred import strcred
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage

from popsrv.app.demo import prepareDemo
from popsrv.auth.passwdfile import PasswdFileError
from popsrv.pop3.factory import DEFAULT_TIMEOUT, POP3Factory
from popsrv.pop3.policy import PLAINTEXT_POLICIES, LoginPolicy
from popsrv.store.realm import BadMaildirTemplate, MaildirRealm, MaildirTemplate
from popsrv.threads import threadRunner
from popsrv.tls import TLSConfigError, TLSSettings

__all__ = ["DEFAULT_LISTEN", "ListeningService", "Options", "makeService"]

DEFAULT_LISTEN = "tcp:1110:interface=127.0.0.1"
DEFAULT_MAILDIR_ROOT = "mail"
DEMO_DIRECTORY = "popsrv-demo"
MAX_WORKERS = 256
# The listeners whose sockets worker processes can adopt as they are
# (a UNIX socket's file is removed by whichever worker stops first, and
# systemd's sockets are for the process it started).
WORKER_LISTENERS = ("tcp", "tcp6", "ssl")
SWITCH_INTERVAL = 0.0005

log = Logger()


def describeAddress(address) -> str:
    """
    Return a listening address as C{host:port} (or a path for UNIX sockets).
    """
    if hasattr(address, "port"):
        host = address.host
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    return str(getattr(address, "name", address))


class ListeningService(Service):
    """
    Listens on one endpoint while the service runs.

    Listening starts in C{privilegedStartService}, before twistd drops root,
    so privileged ports work; a failure to listen is raised at once, so a
    busy port stops C{twistd} with a clear error.

    @ivar port: the C{IListeningPort} once listening.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory,
        onListening: Optional[Callable[[IListeningPort], None]] = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: Optional[IListeningPort] = None
        self._onListening = onListening
        self._waiting: Optional[Deferred] = None

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
        failures = []
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

    def stopService(self):
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


class ReloadOnHangup(Service):
    """
    Reloads the TLS certificate and key when the process gets SIGHUP (as
    after a certificate renewal), while the service runs.
    """

    def __init__(self, tls: TLSSettings, reactor) -> None:
        self.tls = tls
        self.reactor = reactor
        self._previous = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _hangup(self, signum, frame) -> None:
        self.reactor.callFromThread(self.tls.reload)


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    The options of C{twistd popsrv}.
    """

    synopsis = "[--listen ENDPOINT]... [--maildir-root DIR | --maildir TEMPLATE] [--auth CHECKER]... [options]"
    longdesc = (
        "Serve the Maildirs of a directory over POP3 (RFC 1939). "
        "User alice's Maildir is DIR/alice/ (cur/ new/ tmp/, created at her first login), "
        "or wherever --maildir TEMPLATE puts it, e.g. /var/vmail/%d/%n for alice@example.com "
        "in /var/vmail/example.com/alice/. "
        "Users come from --auth checkers: passwd-file:PATH (lines user:{SCHEME}secret, "
        "as Dovecot's), pgsql:FILE (a PostgreSQL query), file:PATH (lines user:password), "
        "memory:alice:secret:bob:secret, unix, or any installed checker plugin "
        "(twistd popsrv --help-auth lists them). Run it in the foreground with "
        "'twistd -n popsrv ...'; 'twistd -n popsrv --demo' serves a demo mailbox."
    )
    supportedInterfaces = (IUsernamePassword, IUsernameHashedPassword)
    optFlags = [
        ["demo", None, f"Serve a demo user and Maildir kept in ./{DEMO_DIRECTORY}/ and print how to fetch its mail."],
    ]
    optParameters = [
        [
            "maildir-root", "m", None,
            "Directory holding one Maildir per login: user alice's is DIR/alice/ (the same as "
            "--maildir DIR/%u) [default: mail].",
        ],
        [
            "maildir", None, None,
            "Where each user's Maildir is, with %u (the login), %n (its local part, before the last @), "
            "%d (its domain, lower-cased; a login without one is refused) and %% (a %), "
            "e.g. /var/vmail/%d/%n. Instead of --maildir-root.",
        ],
        ["tls-cert", None, None, "PEM file with the TLS certificate (and its chain) for STLS; reloaded on SIGHUP."],
        ["tls-key", None, None, "PEM file with the TLS private key for STLS."],
        [
            "plaintext-auth", None, "tls-only",
            "When USER/PASS and SASL PLAIN/LOGIN may send passwords: tls-only (over TLS or from "
            "a loopback address), always, or never.",
        ],
        ["expire", None, "NEVER", "Days the server keeps messages, advertised as EXPIRE in CAPA (or NEVER)."],
        ["login-delay", None, None, "Minimum seconds between two logins of one user (LOGIN-DELAY)."],
        ["hostname", None, None, "Host name in the greeting's APOP challenge [default: this machine's name]."],
        [
            "workers", None, 1,
            "Processes serving the listening sockets (the parent binds them, starts the workers and "
            "restarts any that dies); 1 serves from this process.",
            int,
        ],
        [
            "timeout", None, DEFAULT_TIMEOUT,
            "Seconds of inactivity before a session is closed without deleting anything "
            "(RFC 1939 asks for at least 600).",
            int,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.arguments: list[str] = []

    def parseOptions(self, options=None) -> None:
        """
        Parse the options, keeping them as given for worker processes.
        """
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_auth(self, description: str) -> None:
        """
        Specify an authentication method for the server.
        """
        try:
            checker = strcred.makeChecker(description)
        except PasswdFileError as error:
            raise usage.UsageError(f"--auth {description.partition(':')[0]}: {error}")
        except Exception:
            # Twisted's own messages for unknown or unsuitable checkers.
            return super().opt_auth(description)
        self.addChecker(checker)
        return None

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint description; repeatable, e.g. tcp:110, \
tcp:1110:interface=127.0.0.1, ssl:995:privateKey=key.pem:certKey=cert.pem, \
systemd:domain=INET:index=0 [default: tcp:1110:interface=127.0.0.1]."""
        try:
            endpoint = endpoints.serverFromString(MemoryReactor(), description)
        except Exception as error:
            reason = str(error) or type(error).__name__
            raise usage.UsageError(f"--listen {description!r} is not a usable endpoint: {reason}")
        port = getattr(endpoint, "_port", 0)
        if isinstance(port, int) and not 0 <= port <= 65535:
            raise usage.UsageError(f"--listen {description!r}: port {port} is not between 0 and 65535")
        self["listen"].append(description)

    def postOptions(self) -> None:
        """
        Check the options as a whole.
        """
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not 1 <= self["workers"] <= MAX_WORKERS:
            raise usage.UsageError(f"--workers must be between 1 and {MAX_WORKERS}")
        if self["workers"] > 1:
            for description in self["listen"]:
                kind, _, rest = description.partition(":")
                if kind == "haproxy":
                    kind = rest.partition(":")[0]
                if kind not in WORKER_LISTENERS:
                    raise usage.UsageError(
                        f"--workers serves tcp:, tcp6: and ssl: listeners (also behind haproxy:), "
                        f"not {description!r}"
                    )
        self["maildir-template"] = self._maildirTemplate()
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be a positive number of seconds")
        self["credCheckers"] = [_withByteNames(c) for c in self.get("credCheckers", [])]
        if self["plaintext-auth"] not in PLAINTEXT_POLICIES:
            raise usage.UsageError(f"--plaintext-auth must be one of: {', '.join(PLAINTEXT_POLICIES)}")
        self["expire"] = _daysOrNever(self["expire"])
        if self["login-delay"] is not None:
            self["login-delay"] = _nonNegative("--login-delay", self["login-delay"])
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        self["tls"] = None
        if self["tls-cert"]:
            try:
                self["tls"] = TLSSettings(self["tls-cert"], self["tls-key"])
            except TLSConfigError as error:
                raise usage.UsageError(str(error))
        if not self["credCheckers"] and not self["demo"]:
            raise usage.UsageError(
                "no users are configured: give --auth, for example "
                "--auth file:/etc/popsrv/passwd (lines user:password) or "
                "--auth memory:alice:secret, or try --demo"
            )


    def _maildirTemplate(self) -> MaildirTemplate:
        """
        The Maildir template of --maildir, or of --maildir-root (or its
        default), or a usage error.
        """
        if self["maildir"] is not None and self["maildir-root"] is not None:
            raise usage.UsageError("give --maildir-root DIR or --maildir TEMPLATE, not both")
        try:
            if self["maildir"] is not None:
                return MaildirTemplate(self["maildir"])
            if self["maildir-root"] is None:
                self["maildir-root"] = DEFAULT_MAILDIR_ROOT
            return MaildirTemplate.forRoot(self["maildir-root"])
        except BadMaildirTemplate as error:
            raise usage.UsageError(f"--maildir: {error}")


def _nonNegative(option: str, value: str) -> int:
    """
    Parse a whole number of at least 0, or raise a usage error.
    """
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise usage.UsageError(f"{option} takes a whole number of at least 0, not {value!r}")
    return number


def _daysOrNever(value: str):
    """
    Parse --expire: C{None} for NEVER, or a number of days.
    """
    if value.upper() == "NEVER":
        return None
    return _nonNegative("--expire", value)


def _withByteNames(checker):
    """
    Make Twisted's C{memory:} checker compare names and passwords as bytes,
    like every other checker (strcred builds it with text).
    """
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (v.encode("utf-8") if isinstance(v, str) else v)
            for k, v in checker.users.items()
        }
    return checker


def makeService(
    options: Options,
    reactor=None,
    endpointFor: Optional[Callable[[str], IStreamServerEndpoint]] = None,
) -> IService:
    """
    Build the popsrv service from parsed options: with C{--workers} above 1,
    the parent of the worker processes (L{popsrv.app.workers.WorkerPool}).

    @param endpointFor: makes the endpoint of a C{--listen} description
        (by default, C{endpoints.serverFromString}); a worker gives its own,
        to adopt the sockets its parent bound.
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
            return endpoints.serverFromString(reactor, description)
    checkers = list(options["credCheckers"])
    template = options["maildir-template"]
    announce = None
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
    if options["workers"] > 1 and not worker:
        return _workerPool(options, reactor, announce)
    portal = Portal(MaildirRealm(template=template, runner=threadRunner(reactor)), checkers)
    factory = POP3Factory(
        portal,
        hostname=options["hostname"],
        timeout=options["timeout"],
        clock=reactor,
        tls=options["tls"],
        policy=LoginPolicy(options["plaintext-auth"], options["login-delay"]),
        expire=options["expire"],
    )
    service = MultiService()
    if options["tls"] is not None:
        ReloadOnHangup(options["tls"], reactor).setServiceParent(service)
    for description in options["listen"]:
        ListeningService(endpointFor(description), factory, announce).setServiceParent(service)
    return service


def _workerPool(options: Options, reactor, announce) -> IService:
    """
    The service of a parent process: it binds the listening sockets and runs
    the workers, which serve them with the same options.
    """
    from popsrv.app.workers import WorkerPool

    service = MultiService()
    WorkerPool(reactor, options["listen"], options.arguments, options["workers"], announce).setServiceParent(service)
    return service
