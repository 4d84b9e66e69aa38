"""
Tests for L{popsrv.auth.passwdfile} (the format, reloading when the file changes,
a syntax error that keeps the previous version) and for the C{python -m
popsrv passwd} tool, run as a subprocess with the password on its stdin.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import selectors
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from popsrv.auth import passwdtool, schemes
from popsrv.auth.checkers import StoredSecretChecker
from popsrv.auth.credentials import MAX_PASSWORD_OCTETS
from popsrv.auth.passwdfile import PasswdFile, PasswdFileError, PasswdSyntaxError, lintPasswd, parsePasswd
from popsrv.errors import CredentialsUnavailable
from popsrv.interfaces import ISecretSource
from tests.support.servers import twistdEnvironment

PLAIN_ALICE = "alice:{PLAIN}secret\n"


def replace(path: Path, text: str) -> None:
    """
    Replace a file's contents the way an editor or a tool does: a new file
    renamed over the old one.
    """
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def test_providesISecretSource(tmp_path):
    """PasswdFile provides ISecretSource."""
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    verifyObject(ISecretSource, PasswdFile(str(path)))


def test_format(tmp_path):
    """Comments, blank lines, CRLF and further fields; user names are exact."""
    path = tmp_path / "passwd"
    path.write_bytes(
        b"# a comment\n\n   \n  # an indented comment\nalice:{PLAIN}secret:1000:1000::/home/alice::\r\n"
        b"b\xc3\xb6b:{SHA512-CRYPT}$6$salt$hash\n"
    )
    source = PasswdFile(str(path))
    assert source.secretFor(b"alice") == "{PLAIN}secret"
    assert source.secretFor("böb".encode()) == "{SHA512-CRYPT}$6$salt$hash"
    assert source.secretFor(b"Alice") is None
    assert source.secretFor(b"\xff") is None
    assert source.users() == ["alice", "böb"]


@pytest.mark.parametrize(
    "text, line",
    [
        ("alice:{PLAIN}x\nno colon here\n", 2),
        (":{PLAIN}x\n", 1),
        ("alice:{PLAIN}x\n\nalice:{PLAIN}y\n", 3),
        (" alice:{PLAIN}x\n", 1),
    ],
)
def test_syntaxErrors(text, line):
    """Lines without ':', empty or padded user names and repeated users are syntax errors with their line."""
    with pytest.raises(PasswdSyntaxError) as caught:
        parsePasswd(text.encode())
    assert caught.value.lineNumber == line
    assert f"line {line}" in str(caught.value)


def test_lintFindsEveryFault():
    """
    lintPasswd reports every line with a syntax error, not only the first,
    and every user whose secret cannot be used, in file order; a repeated
    user is an error on its second line only.
    """
    errors, problems = lintPasswd(
        b"alice:{PLAIN}x\nno colon\nbob:{MD5-CRYPT}$1$x$y\nb\xffb:{PLAIN}y\nalice:{PLAIN}z\ncarol:{PLAIN}ok\ndave:\n"
    )
    assert [(e.lineNumber, e.reason) for e in errors] == [
        (2, "a line is user:{SCHEME}secret, but there is no ':'"),
        (4, "the line is not UTF-8"),
        (5, "user 'alice' is already on line 1"),
    ]
    assert [(p.lineNumber, p.user) for p in problems] == [(3, "bob"), (7, "dave")]
    assert lintPasswd(b"# users\nalice:{PLAIN}x\n") == ([], [])


def test_notUTF8IsASyntaxError():
    """A line that is not UTF-8 is an error on that line."""
    with pytest.raises(PasswdSyntaxError, match="line 2"):
        parsePasswd(b"alice:{PLAIN}x\nb\xffb:{PLAIN}y\n")


def test_unusableSecretsAreLoggedOncePerLoad(tmp_path):
    """An unknown scheme or a malformed secret: that user cannot log in; one log line per line at load."""
    path = tmp_path / "passwd"
    path.write_text("alice:{PLAIN}secret\nbob:{MD5-CRYPT}$1$x$y\ncarol:\ndave:{SHA512-CRYPT}oops\n")
    with capturedLogs() as events:
        source = PasswdFile(str(path))
        for _ in range(3):
            source.secretFor(b"bob")
    problems = [e for e in events if e.get("event") == "passwd-unusable-secret"]
    assert [(e["line"], e["user"]) for e in problems] == [(2, "bob"), (3, "carol"), (4, "dave")]
    assert "MD5-CRYPT" in problems[0]["reason"]
    checker = StoredSecretChecker(source, defer.maybeDeferred)
    for user, password in ((b"bob", b"$1$x$y"), (b"carol", b""), (b"dave", b"oops")):
        results = []
        checker.requestAvatarId(UsernamePassword(user, password)).addBoth(results.append)
        assert results[0].check(UnauthorizedLogin)


def test_reloadWhenReplaced(tmp_path):
    """A file replaced by a rename is read again at the next lookup: users come and go without a restart."""
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    source = PasswdFile(str(path))
    assert source.secretFor(b"bob") is None
    replace(path, "bob:{PLAIN}hunter2\n")
    assert source.secretFor(b"bob") == "{PLAIN}hunter2"
    assert source.secretFor(b"alice") is None


def test_reloadWhenEditedInPlace(tmp_path):
    """A file rewritten in place (same inode) is read again when its size or time changes."""
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    source = PasswdFile(str(path))
    with open(path, "a", encoding="utf-8") as stream:
        stream.write("bob:{PLAIN}hunter2\n")
    assert source.secretFor(b"bob") == "{PLAIN}hunter2"
    status = os.stat(path)
    path.write_text("alice:{PLAIN}SECRET\nbob:{PLAIN}hunter2\n")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert source.secretFor(b"alice") == "{PLAIN}SECRET"


def test_unchangedFileIsNotReadAgain(tmp_path, monkeypatch):
    """Lookups of an unchanged file cost a stat, not a read."""
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    source = PasswdFile(str(path))
    loads = []
    original = source._load
    monkeypatch.setattr(source, "_load", lambda signature: (loads.append(signature), original(signature)))
    for _ in range(5):
        assert source.secretFor(b"alice") == "{PLAIN}secret"
    assert loads == []


def test_syntaxErrorKeepsThePreviousVersion(tmp_path):
    """A version with a syntax error is not used; the error is logged once with its line number; a fix is read."""
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    source = PasswdFile(str(path))
    with capturedLogs() as events:
        replace(path, "# new version\nbob:{PLAIN}hunter2\nthis line is broken\n")
        assert source.secretFor(b"alice") == "{PLAIN}secret"
        assert source.secretFor(b"bob") is None
    errors = [e for e in events if e.get("event") == "passwd-syntax-error"]
    assert len(errors) == 1 and errors[0]["line"] == 3
    assert f"{path} line 3" in errors[0]["error"]
    replace(path, "bob:{PLAIN}hunter2\n")
    assert source.secretFor(b"bob") == "{PLAIN}hunter2"
    assert source.secretFor(b"alice") is None


def test_aFileThatCannotBeReadRefusesLogins(tmp_path):
    """
    A file that disappears, or that can no longer be read, makes logins fail
    as unavailable (the version read before may hold users since removed),
    with one log line, until it can be read again.
    """
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    source = PasswdFile(str(path))
    path.unlink()
    with capturedLogs() as events:
        for _ in range(2):
            with pytest.raises(CredentialsUnavailable, match="cannot read"):
                source.secretFor(b"alice")
    assert [e["event"] for e in events if e.get("event") == "passwd-unreadable"] == ["passwd-unreadable"]
    path.write_text("alice:{PLAIN}new\n")
    assert source.secretFor(b"alice") == "{PLAIN}new"


def test_aChangedFileThatCannotBeOpenedRefusesLogins(tmp_path, monkeypatch):
    """
    A changed file that cannot be opened (as after twistd dropped root,
    for a file only root may read) refuses logins rather than keep users
    the new version may have removed.
    """
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE + "bob:{PLAIN}hunter2\n")
    source = PasswdFile(str(path))
    replace(path, PLAIN_ALICE)
    realOpen = open

    def refusingOpen(name, *args, **kwargs):
        if str(name) == str(path):
            raise PermissionError(13, "Permission denied")
        return realOpen(name, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusingOpen)
    with pytest.raises(CredentialsUnavailable, match="Permission denied"):
        source.secretFor(b"bob")
    monkeypatch.setattr("builtins.open", realOpen)
    assert source.secretFor(b"bob") is None
    assert source.secretFor(b"alice") == "{PLAIN}secret"


def test_unusableAtStart(tmp_path):
    """A missing file or a syntax error at start is an error (twistd stops with it)."""
    with pytest.raises(PasswdFileError, match="cannot read"):
        PasswdFile(str(tmp_path / "missing"))
    path = tmp_path / "passwd"
    path.write_text("alice\n")
    with pytest.raises(PasswdSyntaxError, match="line 1"):
        PasswdFile(str(path))


# The passwd tool


def tool(*args: str, password="", cwd=None) -> subprocess.CompletedProcess:
    """
    Run C{python -m popsrv passwd ARGS} with C{password} (C{str}, in UTF-8,
    or C{bytes}) on stdin.
    """
    data = password if isinstance(password, bytes) else password.encode("utf-8")
    return subprocess.run(
        [sys.executable, "-m", "popsrv", "passwd", *args],
        input=data, capture_output=True, env=twistdEnvironment(), timeout=60, cwd=cwd,
    )


def entries(path: Path) -> dict:
    secrets, problems = parsePasswd(path.read_bytes())
    assert problems == []
    return secrets


def test_toolAddSetDelList(tmp_path):
    """add, set, del and list, the password from stdin; the default scheme is ARGON2ID."""
    path = tmp_path / "passwd"
    added = tool("add", str(path), "alice", password="pässword\n")
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = entries(path)["alice"]
    assert stored.startswith("{ARGON2ID}") and schemes.verify(stored, "pässword".encode())

    assert tool("add", "--scheme", "SHA512-CRYPT", str(path), "bob", password="hunter2").returncode == 0
    assert schemes.verify(entries(path)["bob"], b"hunter2") and entries(path)["bob"].startswith("{SHA512-CRYPT}$6$")

    assert tool("set", "--scheme", "scram-sha-256", str(path), "alice", password="new one\r\n").returncode == 0
    assert schemes.verify(entries(path)["alice"], b"new one")
    assert entries(path)["alice"].startswith("{SCRAM-SHA-256}")

    listed = tool("list", str(path))
    assert listed.stdout.decode() == "alice\tSCRAM-SHA-256\nbob\tSHA512-CRYPT\n"

    assert tool("del", str(path), "alice").returncode == 0
    assert list(entries(path)) == ["bob"]


def test_toolKeepsCommentsOtherLinesFieldsAndMode(tmp_path):
    """Editing keeps comments, blank lines, other users' lines octet for octet, extra fields and the mode."""
    path = tmp_path / "passwd"
    original = "# users of pop.example\n\nalice:{PLAIN}x:1000:1000::/home/alice\n# bob below\nbob:{PLAIN}y\n"
    path.write_text(original)
    os.chmod(path, 0o640)
    assert tool("set", str(path), "alice", password="secret").returncode == 0
    lines = path.read_text().splitlines(keepends=True)
    assert lines[:2] == ["# users of pop.example\n", "\n"]
    assert lines[2].startswith("alice:{ARGON2ID}$argon2id$") and lines[2].endswith(":1000:1000::/home/alice\n")
    assert lines[3:] == ["# bob below\n", "bob:{PLAIN}y\n"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert tool("del", str(path), "bob").returncode == 0
    assert path.read_text().endswith("# bob below\n")
    assert sorted(os.listdir(tmp_path)) == ["passwd", "passwd.lock"]


def test_toolAppendsAfterALastLineWithoutNewline(tmp_path):
    """A file whose last line has no line end still gets a line of its own for the new user."""
    path = tmp_path / "passwd"
    path.write_text("alice:{PLAIN}x")
    assert tool("add", "--scheme", "PLAIN", str(path), "bob", password="y").returncode == 0
    assert path.read_text() == "alice:{PLAIN}x\nbob:{PLAIN}y\n"


@pytest.mark.parametrize(
    "args, password, message",
    [
        (["add", "{path}", "alice"], "x", "already in"),
        (["set", "{path}", "carol"], "x", "is not in"),
        (["del", "{path}", "carol"], "", "is not in"),
        (["add", "{path}", "car:ol"], "x", "cannot be a user name"),
        (["add", "{path}", "carol"], "", "the password is empty"),
        (["add", "--scheme", "MD5-CRYPT", "{path}", "carol"], "x", "unknown scheme"),
        (["add", "--scheme", "PLAIN", "{path}", "carol"], "a:b", "colon"),
        (["add", "--scheme", "PLAIN", "{path}", "carol"], b"caf\xe9", "must be UTF-8"),
        (["set", "{missing}", "alice"], "x", "does not exist"),
    ],
)
def test_toolRefusals(tmp_path, args, password, message):
    """Each refusal says why, exits 1 and leaves the file untouched."""
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    args = [a.format(path=path, missing=tmp_path / "missing") for a in args]
    result = tool(*args, password=password)
    assert result.returncode == 1
    assert message in result.stderr.decode()
    assert path.read_text() == PLAIN_ALICE


NAMES_THE_REALM_REFUSES = [
    ("bob@\u212aey.com", "U\\+212A"),
    ("b\u202eob@example.com", "bidirectional control character \\(U\\+202E\\)"),
    ("\u00adbob", "format character \\(U\\+00AD\\)"),
    ("bob@exa\x1bmple.com", "control character \\(U\\+001B\\)"),
    ("a/b", "not a plain file name"),
    (".bob", "not a plain file name"),
    ("bob@example..com", "empty label"),
    ("a" * 256, "too long"),
]


@pytest.mark.parametrize("user, why", NAMES_THE_REALM_REFUSES, ids=lambda value: ascii(value)[:40])
def test_toolRefusesNamesTheRealmRefuses(tmp_path, user, why):
    """
    add and set refuse a user the realm would never let log in (the rules
    of popsrv.names), in one line that says why, before asking for the
    password; del still removes such a user written by hand.
    """
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE + f"{user}:{{PLAIN}}x\n", encoding="utf-8")
    before = path.read_bytes()
    for command in ("add", "set"):
        stdin, stderr = io.StringIO("secret\n"), io.StringIO()
        assert passwdtool.main([command, "--scheme", "PLAIN", str(path), user], stdin=stdin, stderr=stderr) == 1
        assert re.fullmatch(f"popsrv passwd: .* could never log in: .*{why}.*\n", stderr.getvalue())
        assert stdin.read() == "secret\n"
        assert path.read_bytes() == before
    assert passwdtool.main(["del", str(path), user], stderr=io.StringIO()) == 0
    assert path.read_text() == PLAIN_ALICE


def test_toolRefusesANameThatIsNotUTF8(tmp_path):
    """
    A user name given in octets that are not UTF-8 is refused in one line,
    not with a traceback.
    """
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    result = subprocess.run(
        [sys.executable, "-m", "popsrv", "passwd", "add", "--scheme", "PLAIN", str(path).encode(), b"bob\xff"],
        input=b"secret\n", capture_output=True, env=twistdEnvironment(), timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.endswith(b"could never log in: login name is not UTF-8\n")
    assert result.stderr.count(b"\n") == 1
    assert path.read_text() == PLAIN_ALICE


def test_toolAddsInternationalizedNamesAsGiven(tmp_path):
    """
    Names the realm accepts, non-ASCII ones included, are added as they are
    given.
    """
    path = tmp_path / "passwd"
    users = ["b\u00f6b@B\u00fccher.example", "\u212aate@example.com", "bob@xn--bcher-kva.example", "carol"]
    for user in users:
        stderr = io.StringIO()
        status = passwdtool.main(["add", "--scheme", "PLAIN", str(path), user], stdin=io.StringIO("x\n"), stderr=stderr)
        assert status == 0, stderr.getvalue()
    assert list(entries(path)) == users


@pytest.mark.parametrize("scheme", ["PLAIN", "ARGON2ID", "SHA512-CRYPT"])
def test_toolRefusesPasswordsOverTheLimit(tmp_path, scheme):
    """
    A password longer than MAX_PASSWORD_OCTETS (counted in UTF-8 octets, not
    characters) is refused in one line, and the file is left as it was; one
    of exactly MAX_PASSWORD_OCTETS is stored.
    """
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    for password in ("p" * (MAX_PASSWORD_OCTETS + 1), "\u00e9" * (MAX_PASSWORD_OCTETS // 2 + 1)):
        stderr = io.StringIO()
        status = passwdtool.main(["add", "--scheme", scheme, str(path), "bob"], stdin=io.StringIO(password + "\n"),
                                 stderr=stderr)
        assert status == 1
        assert stderr.getvalue() == f"popsrv passwd: passwords longer than {MAX_PASSWORD_OCTETS} octets are refused\n"
        assert path.read_text() == PLAIN_ALICE
        assert os.listdir(tmp_path) == ["passwd"]
    longest = "\u00e9" * (MAX_PASSWORD_OCTETS // 2)
    stderr = io.StringIO()
    status = passwdtool.main(["add", "--scheme", scheme, str(path), "bob"], stdin=io.StringIO(longest + "\n"),
                             stderr=stderr)
    assert status == 0, stderr.getvalue()
    assert schemes.verify(entries(path)["bob"], longest.encode("utf-8"))


def test_toolRefusesAFileWithASyntaxError(tmp_path):
    """The tool does not edit a file it cannot parse; it names the line."""
    path = tmp_path / "passwd"
    path.write_text("alice:{PLAIN}x\nbroken\n")
    result = tool("add", str(path), "bob", password="y")
    assert result.returncode == 1 and "line 2" in result.stderr.decode()


def test_toolTakesNoPasswordArgument(tmp_path):
    """There is no way to give the password on the command line."""
    result = tool("add", str(tmp_path / "passwd"), "alice", "secret", password="x")
    assert result.returncode == 2
    assert not (tmp_path / "passwd").exists()


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_toolAsksTwiceAtATerminal(tmp_path, monkeypatch):
    """At a terminal the password is asked twice; two different answers change nothing."""
    path = tmp_path / "passwd"
    answers = iter(["one", "two", "same", "same"])
    monkeypatch.setattr(passwdtool.getpass, "getpass", lambda prompt, stream=None: next(answers))
    stderr = io.StringIO()
    assert passwdtool.main(["add", str(path), "alice"], stdin=TTY(), stderr=stderr) == 1
    assert "differ" in stderr.getvalue() and not path.exists()
    assert passwdtool.main(["add", str(path), "alice"], stdin=TTY(), stderr=stderr) == 0
    assert schemes.verify(entries(path)["alice"], b"same")


def test_moduleUsage():
    """python -m popsrv without a tool prints its usage and fails."""
    result = subprocess.run([sys.executable, "-m", "popsrv"], capture_output=True, env=twistdEnvironment(), timeout=60)
    assert result.returncode == 2 and b"passwd add|set|del|list" in result.stderr


def test_toolSplitsLinesAsTheServerDoes(tmp_path):
    """
    The tool ends lines at LF only, like the server: a form feed inside an
    entry's extra fields stays in that entry, and the file still parses.
    """
    path = tmp_path / "passwd"
    path.write_text("alice:{PLAIN}secret:extra\x0cfield\nbob:{PLAIN}hunter2\n")
    result = subprocess.run(
        [sys.executable, "-m", "popsrv", "passwd", "set", "--scheme", "PLAIN", str(path), "alice"],
        input=b"new-password\n", capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    secrets, _ = parsePasswd(path.read_bytes())
    assert secrets == {"alice": "{PLAIN}new-password", "bob": "{PLAIN}hunter2"}
    assert path.read_text() == "alice:{PLAIN}new-password:extra\x0cfield\nbob:{PLAIN}hunter2\n"


# The passwd tool: one change at a time, and the file's owner, group, mode and links


# The tool run as python -m popsrv passwd runs it, but with a standard input
# that first says on stdout that the password is being read: the test then
# knows the run waits at its prompt.
ANNOUNCING_TOOL = """
import sys
from popsrv.auth import passwdtool


class Announcing:
    def isatty(self):
        return False

    def readline(self):
        sys.stdout.write("reading the password\\n")
        sys.stdout.flush()
        return sys.stdin.buffer.readline()


sys.exit(passwdtool.main(sys.argv[1:], stdin=Announcing()))
"""
LINE_TIMEOUT = 60.0


def readLine(stream, timeout: float = LINE_TIMEOUT) -> bytes:
    """
    One line from a child's pipe, waiting at most C{timeout} seconds; what
    came before the end of the stream if it ends first.
    """
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no complete line within {timeout}s; so far {line!r}")
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                break
            line += chunk
    return line


def startTool(*args: str, script: str = "") -> subprocess.Popen:
    """
    Start the passwd tool (or C{script} with ARGS) with pipes for its
    standard input, output and error.
    """
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "popsrv", "passwd", *args]
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=twistdEnvironment(),
    )


def finish(process: subprocess.Popen, stdin: bytes = b"") -> bytes:
    """
    Give a started tool the rest of its input; return its standard error
    once it has exited, successfully.
    """
    _, err = process.communicate(stdin, timeout=60)
    assert process.returncode == 0, err
    return err


@pytest.fixture
def processes():
    """
    The child processes a test starts; any still running at its end are
    killed.
    """
    started: list = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=60)


def test_toolDelWhileASetWaitsAtItsPromptIsKept(tmp_path, processes):
    """
    A del that completes while a set waits at its password prompt is not
    undone when the set goes on: the set reads the file only once it has
    the password, under the lock.
    """
    path = tmp_path / "passwd"
    path.write_text("alice:{PLAIN}old\nbob:{PLAIN}y\n")
    setting = startTool("set", "--scheme", "PLAIN", str(path), "alice", script=ANNOUNCING_TOOL)
    processes.append(setting)
    assert readLine(setting.stdout) == b"reading the password\n"
    deleting = tool("del", str(path), "bob")
    assert deleting.returncode == 0, deleting.stderr
    assert entries(path) == {"alice": "{PLAIN}old"}
    finish(setting, b"new\n")
    assert entries(path) == {"alice": "{PLAIN}new"}


def test_toolWaitsForTheLock(tmp_path, processes):
    """
    A run waits, saying so, while another holds the lock of the file (an
    flock on FILE.lock, across processes), and changes it afterwards.
    """
    path = tmp_path / "passwd"
    path.write_text("alice:{PLAIN}x\nbob:{PLAIN}y\n")
    lock = open(tmp_path / "passwd.lock", "a+b")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        deleting = startTool("del", str(path), "bob")
        processes.append(deleting)
        waiting = readLine(deleting.stderr).decode()
        assert waiting == f"popsrv passwd: waiting for {tmp_path / 'passwd.lock'} (another run is changing {path})\n"
        assert list(entries(path)) == ["alice", "bob"]
    finally:
        lock.close()
    assert finish(deleting) == b"popsrv passwd: removed bob\n"
    assert list(entries(path)) == ["alice"]


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_toolReplacesTheTargetOfASymlink(tmp_path, relative):
    """
    When FILE is a symbolic link, the file it points to is replaced (by a
    new file in the target's directory) and the link stays a link.
    """
    shared, etc = tmp_path / "shared", tmp_path / "etc"
    shared.mkdir()
    etc.mkdir()
    target = shared / "passwd"
    target.write_text(PLAIN_ALICE)
    link = etc / "passwd"
    pointer = os.path.join("..", "shared", "passwd") if relative else str(target)
    link.symlink_to(pointer)
    for args, password in ((["add", "--scheme", "PLAIN", str(link), "bob"], "y"), (["del", str(link), "alice"], "")):
        result = tool(*args, password=password)
        assert result.returncode == 0, result.stderr
        assert link.is_symlink() and os.readlink(link) == pointer
    assert target.read_text() == "bob:{PLAIN}y\n"
    assert os.listdir(etc) == ["passwd"]
    assert sorted(os.listdir(shared)) == ["passwd", "passwd.lock"]


@pytest.mark.parametrize("victimExists", [False, True], ids=["missing", "existing"])
def test_toolRefusesASymlinkAtTheLockFile(tmp_path, victimExists):
    """
    A symbolic link planted where the lock file goes is not followed: the
    tool refuses in one line, creating or opening nothing through it, and
    the passwd file is left as it was.
    """
    path, victim = tmp_path / "passwd", tmp_path / "victim"
    path.write_text(PLAIN_ALICE)
    if victimExists:
        victim.write_text("not a lock\n")
        os.chmod(victim, 0o640)
    (tmp_path / "passwd.lock").symlink_to(victim)
    stderr = io.StringIO()
    status = passwdtool.main(["add", "--scheme", "PLAIN", str(path), "bob"], stdin=io.StringIO("y\n"), stderr=stderr)
    assert status == 1
    assert stderr.getvalue().startswith(f"popsrv passwd: cannot change {path}: ")
    assert stderr.getvalue().count("\n") == 1
    assert path.read_text() == PLAIN_ALICE
    if victimExists:
        assert victim.read_text() == "not a lock\n" and stat.S_IMODE(os.stat(victim).st_mode) == 0o640
    else:
        assert not victim.exists()


needsRoot = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to other users and groups needs root")
# Users and groups that need not exist: only their numbers matter.
OWNER, GROUP, OTHER_GROUP = 12345, 12346, 12347


@needsRoot
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o2750], ids=oct)
def test_toolKeepsOwnerGroupAndMode(tmp_path, mode):
    """
    The replacement gets the old file's owner, group and mode, set-group-ID
    bit included (run as root, who may give it any).
    """
    path = tmp_path / "passwd"
    path.write_text(PLAIN_ALICE)
    os.chown(path, OWNER, GROUP)
    os.chmod(path, mode)
    result = tool("add", "--scheme", "PLAIN", str(path), "bob", password="y")
    assert result.returncode == 0, result.stderr
    status = os.stat(path)
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (OWNER, GROUP, mode)
    assert list(entries(path)) == ["alice", "bob"]


@pytest.fixture
def sharedDirectory():
    """
    A directory that user OWNER may write to, outside the test's root-only
    temporary directory; removed afterwards.
    """
    directory = Path(tempfile.mkdtemp(prefix="popsrv-passwd-"))
    os.chmod(directory, 0o755)
    os.chown(directory, OWNER, OWNER)
    yield directory
    shutil.rmtree(directory)


# The tool run as user OWNER (group OWNER, and member of the groups given as
# the first argument): it starts as root, whose interpreter user OWNER may not
# be able to read, and gives up root once the tool is imported.
UNPRIVILEGED_TOOL = f"""
import os
import sys
from popsrv.auth import passwdtool

os.setgroups([int(group) for group in sys.argv[1].split(",") if group])
os.setgid({OWNER})
os.setuid({OWNER})
sys.exit(passwdtool.main(sys.argv[2:]))
"""


def toolAs(groups: list, *args: str, password: str = "") -> subprocess.CompletedProcess:
    """
    Run the passwd tool as user OWNER, whose group is OWNER, and who is a
    member of C{groups}.
    """
    return subprocess.run(
        [sys.executable, "-c", UNPRIVILEGED_TOOL, ",".join(map(str, groups)), *args], input=password.encode(),
        capture_output=True, env=twistdEnvironment(), timeout=60,
    )


@needsRoot
@pytest.mark.parametrize("owner, group, groups", [
    (OWNER, GROUP, []),
    (0, OWNER, []),
    (0, GROUP, [GROUP]),
])
def test_toolRefusesToChangeTheOwnerOrGroup(sharedDirectory, owner, group, groups):
    """
    A user who cannot give the new file the old one's owner or group (not
    root, not its owner, not a member of its group) is refused with a clear
    message, and the file stays as it was, rather than have its owner or
    group silently changed.
    """
    path = sharedDirectory / "passwd"
    path.write_text(PLAIN_ALICE)
    os.chown(path, owner, group)
    os.chmod(path, 0o666)
    result = toolAs(groups, "add", "--scheme", "PLAIN", str(path), "bob", password="y")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"popsrv passwd: cannot replace {path}: the new file would not keep its owner {owner} and group {group} "
        "(run this as root, or as its owner and a member of its group)\n"
    )
    assert path.read_text() == PLAIN_ALICE
    status = os.stat(path)
    assert (status.st_uid, status.st_gid) == (owner, group)
    assert sorted(os.listdir(sharedDirectory)) == ["passwd", "passwd.lock"]


@needsRoot
def test_toolKeepsTheGroupOfAMember(sharedDirectory):
    """
    The owner may keep a group that is not their own if they are a member
    of it.
    """
    path = sharedDirectory / "passwd"
    path.write_text(PLAIN_ALICE)
    os.chown(path, OWNER, GROUP)
    os.chmod(path, 0o640)
    result = toolAs([OTHER_GROUP, GROUP], "add", "--scheme", "PLAIN", str(path), "bob", password="y")
    assert result.returncode == 0, result.stderr
    status = os.stat(path)
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (OWNER, GROUP, 0o640)
    assert list(entries(path)) == ["alice", "bob"]
