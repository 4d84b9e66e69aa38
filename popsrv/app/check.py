"""
C{python -m popsrv check}: check a configuration without serving it.

It takes the options of C{twistd popsrv}, and twistd's C{-u USER} and
C{-g GROUP} (the identity popsrv will serve as; by default this
process's), and checks what a start would need, and a little more:

    - every C{--listen} endpoint (and C{--metrics}, where popsrv has it) can
      be bound: each is bound, as twistd would, and released at once;
    - the TLS certificate and key (C{--tls-cert}, C{--tls-key}, and those of
      C{ssl:} listeners) can be read and belong together, and the
      certificate has not expired (a warning when it expires within
      L{EXPIRY_WARNING});
    - the Maildir root (or the fixed part of the C{--maildir} template) is a
      directory that user can use and make Maildirs in, or can make;
    - every C{--auth} checker answers: a C{passwd-file:} file parses (every
      faulty line is named), a C{pgsql:} database takes a connection and
      runs the query once for a made-up user, a C{file:} file can be read;
      and the files read after twistd takes the user's identity can be read
      by that user;
    - the server's secret file can be read, or made.

Every problem found is one line on standard error (C{problem: ...}), and
so is every warning (C{warning: ...}); with no problem, one C{ok: ...} line
sums up on standard output.  The exit status is L{OK} (warnings allowed),
L{PROBLEMS}, or L{USAGE} when the command line itself cannot be read.
Nothing in the output holds a password given on the command line.
"""

from __future__ import annotations

import datetime
import errno
import math
import os
import sys
from typing import Any, List, Optional, TextIO, Tuple

from twisted.cred import strcred
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from twisted.python.failure import Failure

from popsrv.app.access import (
    Identity,
    currentIdentity,
    identityFor,
    unusableDirectory,
    unwritableDirectory,
)
from popsrv.app.checkauth import EXAMINED, checkAuth, readLater
from popsrv.app.checkmbox import checkSpools
from popsrv.app.listening import serverEndpoint, sslFiles
from popsrv.app.options import DEMO_DIRECTORY, Options, checkerName
from popsrv.app.secret import SecretError, defaultSecretPath, loadSecret
from popsrv.store.realm import MaildirTemplate
from popsrv.store.uidlformat import DEFAULT_UIDL_FORMAT
from popsrv.tls import TLSConfigError, TLSSettings, certificateValidity, loadCertificateOptions

__all__ = ["EXPIRY_WARNING", "OK", "PROBLEMS", "USAGE", "CheckOptions", "Report", "main", "oneLine"]

# A certificate that expires sooner than this is worth a warning.
EXPIRY_WARNING = datetime.timedelta(days=14)
# Exit statuses: all is well (perhaps with warnings); problems found; the
# command line cannot be read.
OK, PROBLEMS, USAGE = 0, 1, 2


def oneLine(text: str) -> str:
    """
    C{text} on one line: line breaks, control and format characters (such
    as a right-to-left override) written as escapes.
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class Report:
    """
    What a check found, in order: problems (popsrv would not start, or not
    serve), and warnings.

    @ivar findings: C{(level, text)} pairs, C{level} C{"problem"} or
        C{"warning"}; each text is one line.
    """

    def __init__(self) -> None:
        self.findings: List[Tuple[str, str]] = []

    def problem(self, text: str) -> None:
        """Record a problem."""
        self.findings.append(("problem", oneLine(text)))

    def warning(self, text: str) -> None:
        """Record a warning."""
        self.findings.append(("warning", oneLine(text)))

    def count(self, level: str) -> int:
        """How many findings of C{level} there are."""
        return sum(1 for found, _ in self.findings if found == level)


class _Unmade:
    """
    Stands in for an --auth checker that the check examines instead of
    making, with the kinds of credentials its factory says it checks (so
    that two checkers of one kind are refused as twistd would).
    """

    def __init__(self, credentialInterfaces: Any) -> None:
        self.credentialInterfaces = credentialInterfaces


class CheckOptions(Options):
    """
    The options of C{python -m popsrv check}: those of C{twistd popsrv},
    and twistd's C{--uid}/C{-u} and C{--gid}/C{-g}.  Where C{twistd popsrv}
    stops at the first unusable option, these collect the problems in
    L{problems} and go on; only a command line that cannot be read at all
    is a usage error.
    """

    synopsis = "Usage: python -m popsrv check [-u USER] [-g GROUP] [the options of twistd popsrv]"
    longdesc = (
        "Check a popsrv configuration without serving it: the --listen endpoints can be bound, "
        "the TLS certificate and key can be used and the certificate is not about to expire, the "
        "Maildirs can be made and used by the user popsrv serves as (-u, -g, as twistd takes them), "
        "and every --auth checker answers. Prints one line per problem (exit status 1), or an ok line "
        "(exit status 0)."
    )

    def __init__(self) -> None:
        super().__init__()
        self.problems: List[str] = []
        self["uid"] = None
        self["gid"] = None
        self._listenGiven = False

    def opt_uid(self, user: str) -> None:
        """The user popsrv will serve as (twistd's --uid), a name or a number [default: this process's]."""
        self["uid"] = user

    opt_u = opt_uid

    def opt_gid(self, group: str) -> None:
        """The group popsrv will serve as (twistd's --gid), a name or a number [default: the user's own]."""
        self["gid"] = group

    opt_g = opt_gid

    def _refuse(self, message: str) -> None:
        self.problems.append(message)

    def opt_auth(self, description: str) -> None:
        """Where users and their passwords come from, as for twistd popsrv \
(--help-auth lists the checkers); repeatable. The files of file:, \
passwd-file: and pgsql: are examined, and a pgsql: database is asked once."""
        kind = description.partition(":")[0]
        if kind not in EXAMINED:
            try:
                super().opt_auth(description)
            except usage.UsageError as error:
                self.problems.append(str(error))
            return
        self.authDescriptions.append(description)
        standIn = _Unmade(strcred.findCheckerFactory(kind).credentialInterfaces)
        self.addChecker(standIn)
        self._nameChecker(standIn, description)

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint description, as for twistd popsrv; \
repeatable [default: tcp:1110:interface=127.0.0.1]. Each is bound, then \
released at once."""
        self._listenGiven = True
        try:
            super().opt_listen(description)
        except usage.UsageError as error:
            self.problems.append(str(error))

    def postOptions(self) -> None:
        """
        Check the options as a whole, and find the identity popsrv will
        serve as.
        """
        # Without a usable --listen, there is nothing to bind (rather than
        # the default, which was not asked for).
        noListener = self._listenGiven and not self["listen"]
        super().postOptions()
        if noListener:
            self["listen"] = []
        try:
            self["identity"] = identityFor(self["uid"], self["gid"])
        except ValueError as error:
            raise usage.UsageError(str(error))

    def _loadTLS(self) -> Optional[TLSSettings]:
        # The check examines the files itself, and says more.
        return None

    def _loadSecret(self) -> Optional[bytearray]:
        # The check must not make the secret file; it examines it.
        return None


def _listenReason(error: CannotListenError) -> str:
    """
    Why a port could not be bound, in a few words.
    """
    socketError = error.socketError
    code = getattr(socketError, "errno", None)
    if code == errno.EADDRINUSE:
        return "address already in use"
    if code == errno.EACCES:
        port = error.port
        if isinstance(port, int) and 0 < port < 1024:
            return "permission denied (ports below 1024 need root: run the check as the user that starts twistd)"
        return "permission denied"
    if code == errno.EADDRNOTAVAIL:
        return "no interface of this machine has that address"
    text = getattr(socketError, "strerror", None) or str(socketError)
    return text[:1].lower() + text[1:]


def _where(error: CannotListenError) -> str:
    """
    The address a port could not be bound to.
    """
    interface, port = error.interface, error.port
    if not interface:
        return f"port {port}" if isinstance(port, int) else str(port)
    return f"[{interface}]:{port}" if ":" in str(interface) else f"{interface}:{port}"


async def _bindAndRelease(reactor: Any, listeners: List[Tuple[str, str]], report: Report) -> None:
    """
    Listen on every endpoint, as twistd would (all at once, so two that
    want one port are found), then stop listening on them all.
    """
    factory = Factory.forProtocol(Protocol)
    factory.noisy = False
    ports: List[IListeningPort] = []
    for option, description in listeners:
        try:
            port = await serverEndpoint(reactor, description).listen(factory)
        except CannotListenError as error:
            report.problem(f"{option} {description!r}: cannot listen on {_where(error)}: {_listenReason(error)}")
        except Exception as error:
            report.problem(f"{option} {description!r}: cannot listen: {str(error) or type(error).__name__}")
        else:
            ports.append(port)
    for port in ports:
        await maybeDeferred(port.stopListening)


def _runInReactor(reactor: Any, work: Deferred[None]) -> None:
    """
    Run the reactor until C{work} is done; raise what it failed with.
    """
    outcome: List[object] = []

    def start() -> None:
        work.addBoth(outcome.append).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    if outcome and isinstance(outcome[0], Failure):
        outcome[0].raiseException()


def checkListeners(reactor: Any, options: CheckOptions, report: Report) -> List[str]:
    """
    Bind and release every --listen endpoint (and --metrics, when the
    options have it), running C{reactor}; return the descriptions.
    """
    listeners = [("--listen", description) for description in options["listen"]]
    metrics = options.get("metrics")
    if isinstance(metrics, str) and metrics:
        listeners.append(("--metrics", metrics))
    if listeners:
        _runInReactor(reactor, ensureDeferred(_bindAndRelease(reactor, listeners, report)))
    return [description for _, description in listeners]


def _checkCertificate(label: str, certificate: str, key: str, report: Report, now: datetime.datetime) -> bool:
    """
    Check that a certificate and key can be used together, and when the
    certificate expires; return whether they can be used.
    """
    try:
        loadCertificateOptions(certificate, key)
        validFrom, validUntil = certificateValidity(certificate)
    except TLSConfigError as error:
        report.problem(f"{label}: {error}")
        return False
    until = f"{validUntil:%Y-%m-%d %H:%M} UTC"
    if validUntil <= now:
        report.problem(f"{label}: the certificate in {certificate} expired on {until}")
    elif validUntil - now < EXPIRY_WARNING:
        days = math.ceil((validUntil - now) / datetime.timedelta(days=1))
        report.warning(
            f"{label}: the certificate in {certificate} expires in {days} day{'s' if days != 1 else ''}, on {until}"
        )
    if validFrom > now:
        report.warning(f"{label}: the certificate in {certificate} is not valid before {validFrom:%Y-%m-%d %H:%M} UTC")
    return True


def checkTLS(options: CheckOptions, identity: Identity, report: Report, now: datetime.datetime) -> None:
    """
    Check --tls-cert and --tls-key, and the files of every C{ssl:}
    listener.
    """
    certificate, key = options["tls-cert"], options["tls-key"]
    if certificate and key and _checkCertificate("--tls-cert/--tls-key", certificate, key, report, now):
        for option, path in (("--tls-cert", certificate), ("--tls-key", key)):
            readLater(f"{option} {path}", path, identity, options, report, "a reload on SIGHUP will fail")
    for description in options["listen"]:
        files = sslFiles(description)
        if files is None:
            continue
        privateKey, certKey = files
        label = f"--listen {description!r}"
        if _checkCertificate(label, certKey, privateKey, report, now):
            for path in sorted({privateKey, certKey}):
                readLater(f"{label} ({path})", path, identity, options, report, "")


def checkMaildirs(options: CheckOptions, identity: Identity, report: Report) -> Optional[str]:
    """
    Check that C{identity} can use the directory every Maildir is below,
    or make it; return that directory.
    """
    template: Optional[MaildirTemplate] = options.get("maildir-template")
    if options["demo"]:
        # (The demo's Maildirs are in mail/ of its directory.)
        label, base, strict = "--demo", os.path.abspath(os.path.join(DEMO_DIRECTORY, "mail")), True
    elif template is None:
        return None
    elif options["maildir"] is not None:
        label, base, strict = f"--maildir {options['maildir']}", template.base, False
    else:
        label, base, strict = f"--maildir-root {options['maildir-root']}", template.base, True
    if not label.endswith(base):
        label = f"{label} ({base})"
    problem = unusableDirectory(base, identity)
    if problem is not None:
        report.problem(f"{label}: {problem}")
        return base
    problem = unwritableDirectory(base, identity)
    if problem is not None and strict:
        report.problem(f"{label}: {problem}, so no user's Maildir can be made there")
    elif problem is not None:
        report.warning(f"{label}: {problem}, so the directories of every Maildir below it must exist already")
    return base


def checkSecret(options: CheckOptions, report: Report) -> None:
    """
    The secret file must be readable and fit, or be possible to make (by
    this process: twistd makes it before taking another identity).
    """
    path = options["secret-file"] or defaultSecretPath()
    if os.path.lexists(path):
        try:
            loadSecret(path)
        except SecretError as error:
            report.problem(f"--secret-file: {error}")
        return
    directory = os.path.dirname(os.path.abspath(path))
    me = currentIdentity()
    problem = unusableDirectory(directory, me) or unwritableDirectory(directory, me)
    if problem is not None:
        report.problem(f"--secret-file: cannot make {path}: {directory}: {problem}")


def _summary(options: CheckOptions, identity: Identity, listeners: List[str], base: Optional[str],
             report: Report) -> str:
    """
    The one line that sums up a check without problems.
    """
    users = [checkerName(description) for description in options.authDescriptions]
    if options["demo"]:
        users.append("the demo user")
    parts = [f"listens on {', '.join(listeners)}" if listeners else "listens nowhere"]
    if options["tls-cert"]:
        parts.append("offers STLS")
    if base is not None:
        parts.append(f"serves mbox spools under {base}" if options["mbox"] else f"keeps Maildirs under {base}")
    parts.append(f"checks users with {', '.join(users)}")
    if options["uidl-format"] is not None and options["uidl-format"].text != DEFAULT_UIDL_FORMAT:
        parts.append(f"shows Dovecot's UIDLs as {options['uidl-format'].text}")
    warnings = report.count("warning")
    more = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
    return oneLine(f"ok: popsrv {'; '.join(parts)}; serving as {identity}{more}")


def main(
    argv: List[str], stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None, reactor: Any = None,
) -> int:
    """
    Check the configuration of the command line C{argv}; print what was
    found; return the exit status.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    options = CheckOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as error:
        for problem in [*options.problems, str(error)]:
            print(f"problem: {oneLine(problem)}", file=stderr)
        return USAGE
    if reactor is None:
        from twisted.internet import reactor
    identity: Identity = options["identity"]
    report = Report()
    for problem in options.problems:
        report.problem(problem)
    listeners = checkListeners(reactor, options, report)
    checkTLS(options, identity, report, datetime.datetime.now(datetime.timezone.utc))
    base = checkMaildirs(options, identity, report) or checkSpools(options, identity, report)
    checkAuth(options, identity, report)
    checkSecret(options, report)
    if identity.uid == 0:
        report.warning(
            "popsrv would serve as root, so Maildir tricks could expose any file on this machine: "
            "give twistd (and this check) -u USER -g GROUP"
        )
    for level, text in report.findings:
        print(f"{level}: {text}", file=stderr)
    if report.count("problem"):
        return PROBLEMS
    print(_summary(options, identity, listeners, base, report), file=stdout)
    return OK
