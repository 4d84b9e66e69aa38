"""
The command line of C{twistd popsrv}: L{Options}, with every option checked
as it is parsed, so a mistake stops the start with one clear line.
"""

from __future__ import annotations

import sys
from typing import List, Optional

from twisted.cred import strcred
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.python import usage

from popsrv import __version__
from popsrv.app.access import readableFileProblem
from popsrv.app.listening import splitTLS
from popsrv.app.optionvalues import (
    MAX_BACKLOG,
    PATH_CHECKERS,
    checkEndpoint,
    checkerName,
    daysOrNever,
    nonNegative,
    wholeNumber,
    withByteNames,
)
from popsrv.app.secret import SecretError, defaultSecretPath, loadSecret
from popsrv.app.shutdown import DEFAULT_SHUTDOWN_GRACE
from popsrv.auth import sasl
from popsrv.auth.passwdfile import PasswdFileError
from popsrv.pop3.factory import DEFAULT_LOGIN_TIMEOUT, DEFAULT_TIMEOUT
from popsrv.pop3.limits import DEFAULT_MAX_PER_ADDRESS
from popsrv.pop3.policy import PLAINTEXT_POLICIES
from popsrv.store.realm import BadPathTemplate, MaildirTemplate, PathTemplate
from popsrv.store.uidlformat import DEFAULT_UIDL_FORMAT, BadUidlFormat, parseUidlFormat
from popsrv.tls import TLSConfigError, TLSSettings

__all__ = [
    "DEFAULT_LISTEN", "DEMO_DIRECTORY", "MAX_BACKLOG", "MAX_WORKERS", "WORKER_LISTENERS", "Options", "checkerName",
]

DEFAULT_LISTEN = "tcp:1110:interface=127.0.0.1"
DEFAULT_MAILDIR_ROOT = "mail"
DEMO_DIRECTORY = "popsrv-demo"
MAX_WORKERS = 256
# The listeners whose sockets worker processes can adopt as they are
# (a UNIX socket's file is removed by whichever worker stops first, and
# systemd's sockets are for the process it started).
WORKER_LISTENERS = ("tcp", "tcp6", "ssl")


# What each supported kind of credentials is, in the words of a usage error.
_CREDENTIAL_KINDS = (
    (IUsernamePassword, "user names with passwords (USER/PASS, PLAIN, LOGIN)"),
    (IUsernameHashedPassword, "APOP, CRAM-MD5 and SCRAM logins"),
)


# The command line's table: each option's name, default and help (what is
# checked of each, and of them together, is Options' methods).
_SYNOPSIS = (
    "[--listen ENDPOINT]... [--maildir-root DIR | --maildir TEMPLATE | --mbox TEMPLATE] [--auth CHECKER]... "
    "[options]"
)
_LONGDESC = (
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
_FLAGS = [
    ["demo", None, f"Serve a demo user and Maildir kept in ./{DEMO_DIRECTORY}/ and print how to fetch its mail."],
    [
        "spawn-workers", None,
        "Start each of the --workers as a new Python process, instead of forking it from the parent "
        "(which shares the memory of their code): for a checker plugin that does not survive a fork.",
    ],
]
_PARAMETERS = [
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
    [
        "mbox", None, None,
        "Serve classic Unix mbox spools instead of Maildirs: where each user's spool is, with the "
        "placeholders of --maildir, e.g. /var/mail/%u. popsrv locks a spool as delivery agents do "
        "(dotlock and fcntl) only while it reads it at login and rewrites it at QUIT.",
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
    [
        "uidl-format", None, DEFAULT_UIDL_FORMAT,
        "Maildirs moved from Dovecot keep the UIDLs it showed, which its pop3_uidl_format made: give "
        "that, e.g. %v.%u, %f or UID%u-%v (from %u %v %f %g, with modifiers such as %08Xu). Maildirs "
        "moved from Courier keep Courier's UIDLs whatever this says.",
    ],
    ["hostname", None, None, "Host name in the greeting's APOP challenge [default: this machine's name]."],
    [
        "workers", None, 1,
        "Processes serving the listening sockets (the parent binds them, starts the workers and "
        "restarts any that dies); 1 serves from this process.",
        int,
    ],
    [
        "timeout", None, DEFAULT_TIMEOUT,
        "Seconds of inactivity before a logged-in session is closed without deleting anything "
        "(RFC 1939 asks for at least 600).",
        wholeNumber("--timeout"),
    ],
    [
        "login-timeout", None, DEFAULT_LOGIN_TIMEOUT,
        "Seconds of inactivity before a connection that has not logged in is closed.",
        wholeNumber("--login-timeout"),
    ],
    [
        "shutdown-grace", None, DEFAULT_SHUTDOWN_GRACE,
        "Seconds open sessions have to finish when popsrv stops (SIGTERM); a session that QUITs "
        "meanwhile has its deletions applied, the others are then closed without any.",
        float,
    ],
    [
        "sasl-mechanisms", None, None,
        "The SASL mechanisms to offer, e.g. PLAIN,SCRAM-SHA-256 (of " + ", ".join(m.name for m in sasl.MECHANISMS)
        + "); only those the --auth checkers can verify are offered [default: all of them].",
    ],
    [
        "secret-file", None, None,
        "File of the server's persistent secret, made at the first start (keeps what unknown users "
        "are told the same across restarts) [default: $STATE_DIRECTORY/secret, else "
        "/var/lib/popsrv/secret for root, else ~/.local/state/popsrv/secret].",
    ],
    [
        "max-connections", None, None,
        "Connections served at once, in all (with --workers, by all the workers together); more are "
        "turned away with [SYS/TEMP] [default: as many as the open-file limit allows].",
    ],
    [
        "max-connections-per-ip", None, str(DEFAULT_MAX_PER_ADDRESS),
        "Connections served at once from one client address (an IPv6 /64 counts as one); "
        "0 for no limit.",
    ],
]


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    The options of C{twistd popsrv}.
    """

    synopsis = _SYNOPSIS
    longdesc = _LONGDESC
    supportedInterfaces = (IUsernamePassword, IUsernameHashedPassword)
    optFlags = _FLAGS
    optParameters = _PARAMETERS

    # A worker process parses its parent's options: what only the parent
    # needs (the secret) is left to it.
    worker = False

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["metrics"] = None
        self.arguments: list[str] = []
        # Every --auth value given, in order.
        self.authDescriptions: list[str] = []
        self._checkerNames: dict[int, str] = {}

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        """
        Parse the options, keeping them as given for worker processes.
        """
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_version(self) -> None:
        """Print popsrv's version and exit."""
        print(f"popsrv {__version__}")
        sys.exit(0)

    def opt_auth(self, description: str) -> None:
        """Where users and their passwords come from, e.g. passwd-file:PATH \
(--help-auth lists the checkers). One checker per kind of login: two that \
both check USER/PASS (or both APOP) are refused."""
        self.authDescriptions.append(description)
        kind, _, argument = description.partition(":")
        if kind in PATH_CHECKERS:
            # The file must be there before the checker is made: Twisted's
            # file: checker only warns about a missing one (and fails every
            # login), the others' errors would read as unexpected.
            if not argument.strip():
                raise usage.UsageError(f"--auth {kind} needs the path of a file: --auth {kind}:PATH")
            problem = readableFileProblem(argument)
            if problem is not None:
                raise usage.UsageError(f"--auth {kind}:{argument}: {problem}")
        try:
            checker = strcred.makeChecker(description)
            self.addChecker(checker)
        except (PasswdFileError, ValueError) as error:
            if kind not in PATH_CHECKERS:
                super().opt_auth(description)
                return
            # A syntax error or an unusable setting: the message names the file.
            raise usage.UsageError(f"--auth {kind}: {error}")
        except Exception:
            # Twisted's own messages for unknown or unsuitable checkers
            # (such as anonymous, which checks no kind of login popsrv takes).
            super().opt_auth(description)
        else:
            self._nameChecker(checker, description)

    def _nameChecker(self, checker: object, description: str) -> None:
        """
        Remember the --auth description of a checker added, for messages
        (without the passwords a memory: description holds).
        """
        self._checkerNames[id(checker)] = checkerName(description)

    def _refuse(self, message: str) -> None:
        """
        Refuse the command line: raise a usage error with C{message}.
        (C{python -m popsrv check} collects them instead, to report every
        problem.)
        """
        raise usage.UsageError(message)

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint description; repeatable, e.g. tcp:110, \
tcp:1110:interface=127.0.0.1, ssl:995:privateKey=key.pem:certKey=cert.pem, \
systemd:domain=INET:index=0, tls:systemd:domain=INET:name=pop3s (implicit TLS \
with --tls-cert over any endpoint) [default: tcp:1110:interface=127.0.0.1]. TCP \
listeners queue up to 4096 connections unless backlog=N says otherwise."""
        checkEndpoint("--listen", description)
        self["listen"].append(description)

    def opt_metrics(self, description: str) -> None:
        """Serve Prometheus metrics at /metrics on a Twisted endpoint \
description, e.g. tcp:9110:interface=127.0.0.1 (with --workers, the parent \
serves those of every worker)."""
        checkEndpoint("--metrics", description)
        self["metrics"] = description

    def postOptions(self) -> None:
        """
        Check the options as a whole.
        """
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not 1 <= self["workers"] <= MAX_WORKERS:
            self._refuse(f"--workers must be between 1 and {MAX_WORKERS}")
        if self["spawn-workers"] and self["workers"] == 1:
            self._refuse("--spawn-workers is for --workers 2 or more: with one, this process serves")
        if self["workers"] > 1:
            for description in self["listen"]:
                kind, _, rest = splitTLS(description)[0].partition(":")
                if kind == "haproxy":
                    kind = rest.partition(":")[0]
                if kind not in WORKER_LISTENERS:
                    self._refuse(
                        f"--workers serves tcp:, tcp6: and ssl: listeners (also behind haproxy: or tls:), "
                        f"not {description!r}"
                    )
        self._checkDemo()
        self._checkOneCheckerPerCredential()
        self["mbox-template"] = self._mboxTemplate()
        self["maildir-template"] = None if self["mbox"] is not None else self._maildirTemplate()
        if self["timeout"] <= 0:
            self._refuse("--timeout must be a positive number of seconds")
        self._checkLimits()
        self._checkMechanisms()
        self["credCheckers"] = [withByteNames(c) for c in self.get("credCheckers", [])]
        if self["plaintext-auth"] not in PLAINTEXT_POLICIES:
            self._refuse(f"--plaintext-auth must be one of: {', '.join(PLAINTEXT_POLICIES)}")
        self["expire"] = daysOrNever(self["expire"])
        if self["mbox"] is not None and self["uidl-format"] != DEFAULT_UIDL_FORMAT:
            self._refuse(
                "--uidl-format is for Maildirs moved from Dovecot: --mbox spools take their UIDLs "
                "from qpopper's X-UIDL headers or their content"
            )
        try:
            self["uidl-format"] = parseUidlFormat(self["uidl-format"])
        except BadUidlFormat as error:
            self._refuse(f"--uidl-format {self['uidl-format']!r}: {error}")
            self["uidl-format"] = None
        if self["login-delay"] is not None:
            self["login-delay"] = nonNegative("--login-delay", self["login-delay"])
        if bool(self["tls-cert"]) != bool(self["tls-key"]):
            self._refuse("--tls-cert and --tls-key go together")
        implicit = [d for d in self["listen"] if splitTLS(d)[1]]
        if implicit and not self["tls-cert"]:
            self._refuse(f"--listen {implicit[0]!r} needs --tls-cert and --tls-key")
        self["tls"] = self._loadTLS() if self["tls-cert"] and self["tls-key"] else None
        if not self.authDescriptions and not self["demo"]:
            self._refuse(
                "no users are configured: give --auth, for example "
                "--auth file:/etc/popsrv/passwd (lines user:password) or "
                "--auth memory:alice:secret, or try --demo"
            )
        # Last: a command line refused above leaves no secret file behind.
        self["secret"] = None if self.worker else self._loadSecret()

    def _loadTLS(self) -> Optional[TLSSettings]:
        """
        Load the certificate and key of --tls-cert and --tls-key, or
        raise a usage error saying why they cannot be used.
        """
        try:
            return TLSSettings(self["tls-cert"], self["tls-key"])
        except TLSConfigError as error:
            raise usage.UsageError(str(error))

    def _loadSecret(self) -> Optional[bytearray]:
        """
        Read the server's secret (made at the first start), or raise a
        usage error saying why it cannot be.
        """
        try:
            return loadSecret(self["secret-file"] or defaultSecretPath())
        except SecretError as error:
            raise usage.UsageError(f"--secret-file: {error}")

    def _checkMechanisms(self) -> None:
        """
        Parse --sasl-mechanisms: names separated by commas or spaces, in any
        case; an unknown one is a usage error.
        """
        given = self["sasl-mechanisms"]
        if given is None:
            return
        names = [name.upper() for name in given.replace(",", " ").split()]
        unknown = [name for name in names if sasl.mechanism(name) is None]
        if unknown or not names:
            known = ", ".join(m.name for m in sasl.MECHANISMS)
            self._refuse(f"--sasl-mechanisms takes names among {known}, not {given!r}")
        self["sasl-mechanisms"] = names

    def _checkLimits(self) -> None:
        """
        Check the login timeout and the connection limits; a per-address
        limit of 0 means none.
        """
        if not 0 <= self["shutdown-grace"] <= 3600:
            self._refuse("--shutdown-grace must be between 0 and 3600 seconds")
        if self["login-timeout"] <= 0:
            self._refuse("--login-timeout must be a positive number of seconds")
        if self["max-connections"] is not None:
            self["max-connections"] = nonNegative("--max-connections", self["max-connections"])
            if self["max-connections"] == 0:
                self._refuse("--max-connections must be at least 1")
        perAddress = nonNegative("--max-connections-per-ip", self["max-connections-per-ip"])
        self["max-connections-per-ip"] = perAddress or None

    def _checkDemo(self) -> None:
        """
        Refuse --demo with options it would override: the demo has its own
        user and its own Maildir.
        """
        if not self["demo"]:
            return
        if self.authDescriptions:
            self._refuse("--demo serves its own demo user: give --demo or --auth, not both")
        for option in ("maildir-root", "maildir", "mbox"):
            if self[option] is not None:
                self._refuse(
                    f"--demo serves its own Maildir in ./{DEMO_DIRECTORY}/: give --demo or --{option}, not both"
                )

    def _checkOneCheckerPerCredential(self) -> None:
        """
        Refuse two --auth checkers for one kind of credentials: the portal
        would silently use the last, so the same user could be checked
        against one database for USER/PASS and another for APOP.

        (Not chained, trying each checker in turn: a user in two databases
        would have two passwords, an unknown user would cost a lookup in
        every one, which a stranger could time, and a database that is down
        would have to either end the chain or be skipped.)
        """
        byInterface = self.get("credInterfaces", {})
        refused = set()
        for interface, what in _CREDENTIAL_KINDS:
            checkers = byInterface.get(interface, [])
            pair = tuple(id(c) for c in checkers[:2])
            if len(checkers) > 1 and pair not in refused:
                refused.add(pair)
                first, second = (self._checkerNames.get(id(c), type(c).__name__) for c in checkers[:2])
                self._refuse(f"--auth {first} and --auth {second} both check {what}; give one")

    def _maildirTemplate(self) -> Optional[MaildirTemplate]:
        """
        The Maildir template of --maildir, or of --maildir-root (or its
        default); C{None} after a refusal that does not stop the parsing
        (see L{_refuse}).
        """
        if self["maildir"] is not None and self["maildir-root"] is not None:
            self._refuse("give --maildir-root DIR or --maildir TEMPLATE, not both")
            return None
        try:
            if self["maildir"] is not None:
                return MaildirTemplate(self["maildir"])
            if self["maildir-root"] is None:
                self["maildir-root"] = DEFAULT_MAILDIR_ROOT
            return MaildirTemplate.forRoot(self["maildir-root"])
        except BadPathTemplate as error:
            self._refuse(f"--maildir: {error}")
            return None

    def _mboxTemplate(self) -> Optional[PathTemplate]:
        """
        The spool template of --mbox, or C{None} without it (or after a
        refusal that does not stop the parsing); --mbox serves spools
        instead of Maildirs, so it goes with no Maildir option.
        """
        if self["mbox"] is None:
            return None
        for option in ("maildir-root", "maildir"):
            if self[option] is not None:
                self._refuse(f"give --mbox TEMPLATE or --{option}, not both: popsrv serves one kind of maildrop")
                return None
        try:
            return PathTemplate(self["mbox"], "mbox")
        except BadPathTemplate as error:
            self._refuse(f"--mbox: {error}")
            return None
