"""
python -m popsrv check, run as operators run it: a real subprocess with the
options of twistd popsrv, against real sockets, certificates, directories,
passwd files and PostgreSQL.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import attr
import psycopg
import pytest

from tests.support.certificates import makePKI
from tests.support.pgserver import HOST, PostgresServer, freePort
from tests.support.servers import LISTEN_LOCAL, twistdEnvironment

SETPRIV = shutil.which("setpriv")
# Runs a command as root without the capabilities that let root read any
# file, so that file modes apply to it as to any other user.
WITHOUT_OVERRIDE = [SETPRIV or "setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
needsRoot = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to check for other users)")
needsRootAndSetpriv = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv (util-linux) to give up reading any file"
)
ROOT_WARNING = (
    "warning: popsrv would serve as root, so Maildir tricks could expose any file on this machine: "
    "give twistd (and this check) -u USER -g GROUP"
)


@attr.s(auto_attribs=True, frozen=True)
class Checked:
    """
    The outcome of one run: its exit status and its output lines.
    """

    status: int
    out: List[str]
    err: List[str]

    @property
    def problems(self) -> List[str]:
        """The problem lines, without their prefix."""
        return [line[len("problem: "):] for line in self.err if line.startswith("problem: ")]

    @property
    def warnings(self) -> List[str]:
        """The warning lines, without their prefix."""
        return [line[len("warning: "):] for line in self.err if line.startswith("warning: ")]

    @property
    def text(self) -> str:
        """All the output."""
        return "\n".join(self.out + self.err)


def runCheck(*args: str, cwd: Path, prefix: Sequence[str] = ()) -> Checked:
    """
    Run C{python -m popsrv check ARGS} (after C{prefix}, a command that runs
    it) to completion, with the working tree's popsrv.  Whatever it finds,
    it prints lines, never a traceback; every line is a finding or the ok
    line.
    """
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "popsrv", "check", *args], cwd=str(cwd), env=twistdEnvironment(),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
    )
    checked = Checked(
        result.returncode, result.stdout.decode("utf-8").splitlines(), result.stderr.decode("utf-8").splitlines()
    )
    assert "Traceback" not in checked.text, checked.text
    assert all(re.match(r"(problem|warning): ", line) for line in checked.err), checked.text
    assert all(line.startswith("ok: ") for line in checked.out) and len(checked.out) <= 1, checked.text
    return checked


def withoutRootWarning(lines: List[str]) -> List[str]:
    """The lines but the warning about serving as root, which a test run as root gets."""
    return [line for line in lines if "popsrv would serve as root" not in line]


class Config:
    """
    A good configuration in a directory of its own: a plain and an ssl:
    listener on free ports of 127.0.0.1, STLS, a Maildir root still to be
    made, a file: checker, and a secret file still to be made.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pki = makePKI(directory / "pki")
        self.certificate, self.key = self.pki.chain, self.pki.key
        self.passwd = directory / "passwd"
        self.passwd.write_text("alice:secret\n")
        self.root = directory / "mail"
        self.secret = directory / "state" / "secret"
        self.ssl = f"ssl:0:interface=127.0.0.1:privateKey={self.pki.key}:certKey={self.pki.chain}"

    def args(self, *extra: str, listen: Sequence[str] = (), auth: Sequence[str] = ()) -> List[str]:
        """
        The command line: the good one, with C{listen} and C{auth} instead
        of its listeners and checker if given, and C{extra} options.
        """
        args: List[str] = []
        for description in listen or (LISTEN_LOCAL, self.ssl):
            args += ["--listen", description]
        for description in auth or (f"file:{self.passwd}",):
            args += ["--auth", description]
        args += ["--maildir-root", str(self.root), "--secret-file", str(self.secret),
                 "--tls-cert", str(self.certificate), "--tls-key", str(self.key)]
        return args + list(extra)

    def check(self, *extra: str, prefix: Sequence[str] = (), **kwargs: Sequence[str]) -> Checked:
        """Run the check on this configuration, changed as L{args} says."""
        return runCheck(*self.args(*extra, **kwargs), cwd=self.directory, prefix=prefix)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """A good configuration."""
    return Config(tmp_path)


def test_aGoodConfiguration(config: Config) -> None:
    """
    A configuration that can serve: exit status 0 and one ok line that
    sums it up; nothing is made (neither the Maildir root nor the secret),
    and nothing is left listening.
    """
    checked = config.check()
    assert checked.status == 0, checked.text
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert checked.out == [
        f"ok: popsrv listens on {LISTEN_LOCAL}, {config.ssl}; offers STLS; keeps Maildirs under {config.root}; "
        f"checks users with file:{config.passwd}; serving as user {user}" + (" (1 warning)" if user == "root" else "")
    ], checked.text
    assert withoutRootWarning(checked.err) == []
    assert not config.root.exists() and not config.secret.parent.exists()


def test_portsAreReleased(config: Config) -> None:
    """
    The check binds each port and releases it at once: afterwards the
    port is free.
    """
    port = freePort()
    checked = config.check(listen=[f"tcp:{port}:interface=127.0.0.1"])
    assert checked.status == 0, checked.text
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))


def test_aPortInUse(config: Config) -> None:
    """
    A port something else listens on is a problem naming the endpoint and
    the address; the ok line is not printed.
    """
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        description = f"tcp:{port}:interface=127.0.0.1"
        checked = config.check(listen=[LISTEN_LOCAL, description])
    assert checked.status == 1
    assert checked.problems == [f"--listen {description!r}: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert checked.out == []


def test_twoListenersOnOnePort(config: Config) -> None:
    """
    Two --listen options for one port: the second cannot bind, as under
    twistd.
    """
    port = freePort()
    description = f"tcp:{port}:interface=127.0.0.1"
    checked = config.check(listen=[description, description])
    assert checked.problems == [f"--listen {description!r}: cannot listen on 127.0.0.1:{port}: address already in use"]


def test_everyProblemIsReported(config: Config, tmp_path: Path) -> None:
    """
    Each problem is one line, all of them, in the order of the checks:
    here a port in use, a garbage endpoint, a Maildir root that cannot be
    made, a missing passwd file and a certificate with the wrong key.
    """
    other = makePKI(tmp_path / "other")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        checked = runCheck(
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--listen", "tcp:nonsense",
            "--maildir-root", str(blocker / "mail"), "--auth", f"passwd-file:{tmp_path}/missing",
            "--tls-cert", str(config.pki.chain), "--tls-key", str(other.key), "--secret-file", str(config.secret),
            cwd=tmp_path,
        )
    assert checked.status == 1
    assert checked.problems == [
        "--listen 'tcp:nonsense' is not a usable endpoint: invalid literal for int() with base 10: 'nonsense'",
        f"--listen 'tcp:{port}:interface=127.0.0.1': cannot listen on 127.0.0.1:{port}: address already in use",
        f"--tls-cert/--tls-key: cannot use {config.pki.chain} with {other.key}: the key does not match the certificate",
        f"--maildir-root {blocker}/mail: cannot be made: {blocker} is not a directory",
        f"--auth passwd-file:{tmp_path}/missing: no such file",
    ], checked.text


def test_aMismatchedKey(config: Config, tmp_path: Path) -> None:
    """
    A --tls-key of another certificate is a problem saying so.
    """
    config.key = makePKI(tmp_path / "other").key
    checked = config.check()
    assert checked.status == 1
    assert checked.problems == [
        f"--tls-cert/--tls-key: cannot use {config.certificate} with {config.key}: "
        "the key does not match the certificate"
    ], checked.text


def test_aMismatchedListenerKey(config: Config, tmp_path: Path) -> None:
    """
    An ssl: listener whose key is not its certificate's is a problem, in
    Twisted's words.
    """
    other = makePKI(tmp_path / "other")
    ssl = f"ssl:0:interface=127.0.0.1:privateKey={other.key}:certKey={config.pki.chain}"
    checked = config.check(listen=[LISTEN_LOCAL, ssl])
    assert checked.status == 1
    assert checked.problems == [
        f"--listen {ssl!r} is not a usable endpoint: Certificate public and private keys do not match."
    ], checked.text


@needsRootAndSetpriv
def test_anUnreadableKey(config: Config) -> None:
    """
    A key the check (run as root without the power to read any file)
    cannot read: a problem naming it.
    """
    config.pki.key.chmod(0)
    checked = config.check(listen=[LISTEN_LOCAL], prefix=WITHOUT_OVERRIDE)
    assert checked.status == 1
    assert checked.problems == [f"--tls-cert/--tls-key: cannot read {config.pki.key}: Permission denied"], checked.text


@needsRoot
def test_aKeyTheServingUserCannotRead(sharedDirectory: Path) -> None:
    """
    A key only root can read, for a server that serves as nobody: a
    warning without --workers (a reload on SIGHUP would fail), a problem
    with them (they read it as nobody).
    """
    config = Config(sharedDirectory)
    os.chmod(sharedDirectory / "pki", 0o755)
    config.root.mkdir()
    os.chown(config.root, 65534, 65534)
    asNobody = ("-u", "nobody", "-g", "nogroup")
    checked = config.check(*asNobody, listen=[LISTEN_LOCAL])
    assert checked.status == 0, checked.text
    unreadable = f"user nobody cannot read {config.pki.key} (root:root, mode 0600)"
    assert checked.warnings == [f"--tls-key {config.pki.key}: {unreadable}: a reload on SIGHUP will fail"]
    assert checked.out[0].endswith("serving as user nobody (1 warning)"), checked.text
    checked = config.check(*asNobody, "--workers", "2", listen=[LISTEN_LOCAL])
    assert checked.status == 1
    assert checked.problems == [
        f"--tls-key {config.pki.key}: {unreadable}, and --workers processes read it as that user"
    ], checked.text


@pytest.mark.parametrize("days", [5, 13.5])
def test_aCertificateExpiringSoon(tmp_path: Path, days: float) -> None:
    """
    A certificate that expires within 14 days is a warning, with the number
    of days and the date; the check still passes.
    """
    config = Config(tmp_path)
    soon = makePKI(tmp_path / "soon", days=days)
    config.certificate, config.key = soon.chain, soon.key
    checked = config.check(listen=[LISTEN_LOCAL])
    assert checked.status == 0, checked.text
    [warning] = withoutRootWarning(checked.warnings)
    shown = 5 if days == 5 else 14
    assert re.fullmatch(
        rf"--tls-cert/--tls-key: the certificate in {re.escape(str(soon.chain))} expires in {shown} days, "
        r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC",
        warning,
    ), warning
    assert checked.out[0].startswith("ok: ") and "warning" in checked.out[0]


def test_anExpiredCertificate(tmp_path: Path) -> None:
    """
    An expired certificate, on an ssl: listener here, is a problem.
    """
    config = Config(tmp_path)
    expired = makePKI(tmp_path / "expired", days=-2)
    ssl = f"ssl:0:interface=127.0.0.1:privateKey={expired.key}:certKey={expired.chain}"
    checked = config.check(listen=[ssl])
    assert checked.status == 1
    [problem] = checked.problems
    assert problem.startswith(f"--listen {ssl!r}: the certificate in {expired.chain} expired on "), problem


def test_aMaildirRootUnderAFile(config: Config, tmp_path: Path) -> None:
    """
    A Maildir root that does not exist and cannot be made, because a file
    is where a directory above it should be, is a problem; so is a
    --maildir template whose fixed part is a file.
    """
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    checked = config.check("--maildir-root", str(blocker / "deeper" / "mail"))
    assert checked.status == 1
    assert checked.problems == [f"--maildir-root {blocker}/deeper/mail: cannot be made: {blocker} is not a directory"]
    root = [arg for arg in config.args() if arg != "--maildir-root" and arg != str(config.root)]
    checked = runCheck(*root, "--maildir", f"{blocker}/%d/%n", cwd=tmp_path)
    assert checked.problems == [f"--maildir {blocker}/%d/%n ({blocker}): not a directory"], checked.text


@needsRoot
def test_maildirsForTheServingUser(sharedDirectory: Path) -> None:
    """
    With -u, the Maildir root is checked for that user: one it cannot
    make directories in is a problem; the fixed part of a --maildir
    template, only a warning (the Maildirs below may exist already); once
    the root is the user's, all is well.
    """
    config = Config(sharedDirectory)
    config.root.mkdir(mode=0o755)
    config.passwd.chmod(0o644)
    os.chown(config.key, 65534, -1)  # the key is the serving user's, as it may be
    asNobody = ("-u", "nobody")
    checked = config.check(*asNobody, listen=[LISTEN_LOCAL])
    assert checked.status == 1
    assert checked.problems == [
        f"--maildir-root {config.root}: user nobody cannot make directories in {config.root} (root:root, mode 0755), "
        "so no user's Maildir can be made there"
    ], checked.text
    args = [arg for arg in config.args(*asNobody, listen=[LISTEN_LOCAL]) if arg not in ("--maildir-root",
                                                                                      str(config.root))]
    checked = runCheck(*args, "--maildir", f"{config.root}/%d/%n", cwd=sharedDirectory)
    assert checked.status == 0, checked.text
    assert checked.warnings == [
        f"--maildir {config.root}/%d/%n ({config.root}): user nobody cannot make directories in {config.root} "
        "(root:root, mode 0755), so the directories of every Maildir below it must exist already"
    ]
    os.chown(config.root, 65534, 65534)
    checked = config.check(*asNobody, listen=[LISTEN_LOCAL])
    assert checked.status == 0, checked.text
    assert checked.err == [] and checked.out[0].endswith("serving as user nobody")


@needsRoot
def test_aFileCheckerTheServingUserCannotRead(sharedDirectory: Path) -> None:
    """
    The file: checker reads its file at every login, after twistd took the
    user's identity: a file only root can read is a problem for -u nobody.
    """
    config = Config(sharedDirectory)
    config.passwd.chmod(0o600)
    checked = config.check("-u", "nobody", listen=[LISTEN_LOCAL])
    assert f"--auth file:{config.passwd}: user nobody cannot read {config.passwd} (root:root, mode 0600), " \
           "and the file: checker reads it at every login" in checked.problems, checked.text


def test_unknownUserOrGroup(config: Config) -> None:
    """
    An unknown -u user or -g group cannot be checked for: a usage error
    (status 2), one line.
    """
    checked = config.check("-u", "no-such-user-here")
    assert (checked.status, checked.err) == (2, ["problem: no such user: 'no-such-user-here'"])
    checked = config.check("--gid", "no-such-group-here")
    assert (checked.status, checked.err) == (2, ["problem: no such group: 'no-such-group-here'"])


def test_aCommandLineThatCannotBeRead(config: Config) -> None:
    """
    An option that cannot be parsed is a usage error with status 2 (as
    twistd would stop), in one line; a value refused by the checks is a
    problem like the others.
    """
    checked = config.check("--timeout", "soon")
    assert checked.status == 2
    assert checked.problems == ["Parameter type enforcement failed: --timeout takes a whole number, not 'soon'"]
    checked = config.check("--timeout", "0")
    assert (checked.status, checked.problems) == (1, ["--timeout must be a positive number of seconds"])


def test_aPasswdFileWithBadLines(config: Config, tmp_path: Path) -> None:
    """
    Every line with a syntax error is a problem (twistd would refuse the
    file), every user whose secret cannot be used a warning.
    """
    passwd = tmp_path / "users"
    passwd.write_text("alice:{PLAIN}secret\nno colon\nbob:{MD5-CRYPT}$1$x$y\nalice:{PLAIN}again\n")
    checked = config.check(auth=[f"passwd-file:{passwd}"])
    assert checked.status == 1
    label = f"--auth passwd-file:{passwd}"
    assert checked.problems == [
        f"{label}: line 2: a line is user:{{SCHEME}}secret, but there is no ':'",
        f"{label}: line 4: user 'alice' is already on line 1",
    ], checked.text
    assert withoutRootWarning(checked.warnings) == [
        f"{label}: line 3: user 'bob' cannot log in: unknown scheme {{MD5-CRYPT}}"
    ]


def test_aPasswdFileWithAnUnusableSecretOnly(config: Config, tmp_path: Path) -> None:
    """
    A user who cannot log in is a warning: twistd starts with such a file.
    """
    passwd = tmp_path / "users"
    passwd.write_text("alice:{PLAIN}secret\nbob:{MD5-CRYPT}$1$x$y\n")
    checked = config.check(auth=[f"passwd-file:{passwd}"])
    assert checked.status == 0, checked.text
    assert f"--auth passwd-file:{passwd}: line 2: user 'bob' cannot log in: unknown scheme {{MD5-CRYPT}}" \
        in checked.warnings
    assert checked.out[0].startswith("ok: ") and f"checks users with passwd-file:{passwd};" in checked.out[0]


def writeSettings(path: Path, conninfo: str, query: str = "SELECT password FROM check_users WHERE userid = %(user)s"):
    """A pgsql: settings file."""
    path.write_text(f"[pgsql]\nconninfo = {conninfo}\nquery = {query}\ntimeout = 2\n")
    return path


def test_pgsqlWithNothingListening(config: Config, tmp_path: Path) -> None:
    """
    A pgsql: database on a port where nothing listens is a problem with
    libpq's reason; the password in the connection string is not shown.
    """
    settings = writeSettings(tmp_path / "pgsql.conf", f"host={HOST} port={freePort()} dbname=mail password=pg-s3cret")
    checked = config.check(auth=[f"pgsql:{settings}"])
    assert checked.status == 1
    [problem] = checked.problems
    assert problem.startswith(f"--auth pgsql:{settings}: cannot connect: ") and "Connection refused" in problem
    assert "pg-s3cret" not in checked.text


@pytest.fixture(scope="module")
def checkDatabase(postgres: PostgresServer) -> str:
    """
    A table of users in the session's PostgreSQL and the connection
    string of a role that may read it.
    """
    with psycopg.connect(postgres.conninfo(), autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS check_users")
        admin.execute("DROP ROLE IF EXISTS popsrv_check")
        admin.execute("CREATE ROLE popsrv_check LOGIN PASSWORD 'pg-s3cret'")
        admin.execute("CREATE TABLE check_users (userid text PRIMARY KEY, password text)")
        admin.execute("INSERT INTO check_users VALUES ('alice', '{PLAIN}secret')")
        admin.execute("GRANT SELECT ON check_users TO popsrv_check")
    return postgres.conninfo(user="popsrv_check", password="pg-s3cret")


def test_pgsqlWithARealDatabase(config: Config, tmp_path: Path, checkDatabase: str) -> None:
    """
    A real PostgreSQL that runs the query: all is well (and the password is
    not shown); a query on a table that is not there is a problem.
    """
    settings = writeSettings(tmp_path / "pgsql.conf", checkDatabase)
    checked = config.check(auth=[f"pgsql:{settings}"])
    assert checked.status == 0, checked.text
    assert f"checks users with pgsql:{settings};" in checked.out[0]
    assert "pg-s3cret" not in checked.text
    writeSettings(settings, checkDatabase, "SELECT password FROM no_such_table WHERE userid = %(user)s")
    checked = config.check(auth=[f"pgsql:{settings}"])
    assert checked.status == 1
    assert checked.problems == [
        f'--auth pgsql:{settings}: the query failed: relation "no_such_table" does not exist'
    ], checked.text


def test_garbageEndpoints(config: Config) -> None:
    """
    Endpoint descriptions of garbage, with line breaks and terminal
    escapes, are problems of one line each, shown escaped; the other
    checks still run.
    """
    garbage = ["tcp:1\n\x1b[31mred", "nonsense:::", "tcp:99999", "\u202egnp.evil"]
    checked = config.check(listen=garbage)
    assert checked.status == 1
    assert len(checked.problems) == 4, checked.text
    assert "\x1b" not in checked.text and "\u202e" not in checked.text
    assert checked.problems[0].startswith(r"--listen 'tcp:1\n\x1b[31mred' is not a usable endpoint: ")
    assert checked.problems[3].startswith(r"--listen '\u202egnp.evil' is not a usable endpoint: ")


@pytest.mark.parametrize("auth, status", [
    (["memory:alice:s3cret"], 0),
    (["memory:alice:s3cret", "memory:bob:s3cret"], 1),
    (["memory:alice:s3cret:bob"], 1),
    (["memory:alice:s3cret", "file:/nonexistent"], 1),
])
def test_passwordsInAuthAreNeverShown(config: Config, auth: List[str], status: int) -> None:
    """
    A password given in an --auth argument appears nowhere in the output,
    whether the check passes (the ok line names the checker memory:...)
    or not.
    """
    checked = config.check(auth=auth)
    assert checked.status == status, checked.text
    assert "s3cret" not in checked.text, checked.text
    if status == 0:
        assert "checks users with memory:...;" in checked.out[0]


def test_moduleUsageListsCheck(tmp_path: Path) -> None:
    """
    python -m popsrv --help names the check tool; check --help its
    options, -u and -g included.
    """
    result = subprocess.run([sys.executable, "-m", "popsrv", "--help"], capture_output=True,
                            env=twistdEnvironment(), timeout=60)
    assert result.returncode == 0 and b"python -m popsrv check" in result.stderr
    result = subprocess.run([sys.executable, "-m", "popsrv", "check", "--help"], capture_output=True,
                            env=twistdEnvironment(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"Usage: python -m popsrv check" in result.stdout
    for option in (b"--uid=", b"--gid=", b"--listen=", b"--auth="):
        assert option in result.stdout


def test_uidlFormat(config: Config) -> None:
    """
    --uidl-format: one popsrv cannot serve is a problem (with why, on one
    line); one it can, other than Dovecot's default, is named in the ok line.
    """
    checked = config.check("--uidl-format", "%08Xm")
    assert checked.status == 1
    assert checked.problems == [
        "--uidl-format '%08Xm': %m (the MD5 of the message header) is refused: Dovecot computes it for mbox only, "
        "and its pop3 fails on a Maildir with it, so no Maildir was ever served with %m UIDLs"
    ]
    checked = config.check("--uidl-format", "UID%u-%v")
    assert checked.status == 0, checked.text
    assert "; shows Dovecot's UIDLs as UID%u-%v; " in checked.out[0]
