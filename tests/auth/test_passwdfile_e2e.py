"""
End-to-end tests of C{--auth passwd-file:PATH}: the real popsrv under
twistd, a passwd file with a user of every scheme, and real clients over TCP
on 127.0.0.1 (which the default plaintext policy trusts): poplib with
USER/PASS and APOP, poplib with scramp for SCRAM-SHA-256 (this machine's
curl has no SCRAM), and curl with PLAIN, LOGIN and CRAM-MD5.  The file is
changed with C{python -m popsrv passwd} while the server runs.
"""

from __future__ import annotations

import base64
import poplib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List

import pytest
import scramp

from popsrv.auth import schemes
from popsrv.store.maildir import deliver
from tests.support.scram import HandScramClient
from tests.support.servers import LISTEN_LOCAL, twistdEnvironment

if TYPE_CHECKING:
    from tests.support.servers import Launcher, TwistdProcess

HOST = "127.0.0.1"
SOCKET_TIMEOUT = 30.0
CURL_LOGIN_DENIED = 67
PASSWORD = "pässword 1"
USERS = {
    "argon": "ARGON2ID",
    "blowfish": "BLF-CRYPT",
    "sha512": "SHA512-CRYPT",
    "sha256": "SHA256-CRYPT",
    "scram": "SCRAM-SHA-256",
    "plain": "PLAIN",
}


def message(user: str) -> bytes:
    """
    The message in C{user}'s Maildir.
    """
    headers = f"From: postmaster@example.org\r\nTo: {user}@example.org\r\nSubject: for {user}\r\n"
    return f"{headers}\r\nHello {user}.\r\n".encode()


class PasswdServer:
    """
    A running popsrv with a passwd file.
    """

    def __init__(self, twistd: TwistdProcess, passwd: Path, root: Path, port: int) -> None:
        self.twistd = twistd
        self.passwd = passwd
        self.root = root
        self.port = port

    def url(self, path: str = "") -> str:
        return f"pop3://{HOST}:{self.port}/{path}"


def startPasswdServer(launcher: Launcher, name: str, *extra: str) -> PasswdServer:
    """
    Start popsrv with one user per scheme (password PASSWORD), one line with
    an unknown scheme, and one message in each user's Maildir.
    """
    workdir = launcher.base / name
    root = workdir / "mail"
    workdir.mkdir(parents=True)
    lines = ["# users of every scheme", ""]
    lines += [f"{user}:{schemes.hashPassword(PASSWORD, scheme)}" for user, scheme in USERS.items()]
    lines += ["legacy:{MD5-CRYPT}$1$salt$hash", ""]
    passwd = workdir / "passwd"
    passwd.write_text("\n".join(lines), encoding="utf-8")
    for user in USERS:
        deliver(str(root / user), message(user))
    process = launcher.twistd(
        ["--listen", LISTEN_LOCAL, "--maildir-root", str(root), "--auth", f"passwd-file:{passwd}", *extra], workdir,
    )
    server = PasswdServer(process, passwd, root, process.waitListening())
    if "--workers" in extra:
        for index in range(int(extra[extra.index("--workers") + 1])):
            process.waitFor(rf"worker {index}\] worker ready", timeout=30)
    return server


@pytest.fixture(scope="module")
def passwdServer(moduleLauncher: Launcher) -> PasswdServer:
    """popsrv in one process with a user of every scheme (L{startPasswdServer})."""
    return startPasswdServer(moduleLauncher, "passwd-file")


@pytest.fixture(scope="module")
def passwdWorkers(moduleLauncher: Launcher) -> PasswdServer:
    """The same with two workers."""
    return startPasswdServer(moduleLauncher, "passwd-file-workers", "--workers", "2")


def retrieve(client: poplib.POP3) -> bytes:
    _, lines, _ = client.retr(1)
    client.quit()
    return b"\r\n".join(lines) + b"\r\n"


def userPass(server: PasswdServer, user: str, password: str = PASSWORD) -> poplib.POP3:
    client = poplib.POP3(HOST, server.port, timeout=SOCKET_TIMEOUT)
    try:
        client.user(user)
        client.pass_(password)
    except BaseException:
        client.close()
        raise
    return client


def curl(*args: str) -> subprocess.CompletedProcess:
    path = shutil.which("curl")
    if path is None:
        pytest.fail("curl is not installed (apt-get install curl)")
    return subprocess.run([path, "-q", "-sS", "-v", "--max-time", "30", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60)


def tool(*args: str, password: str = "") -> None:
    result = subprocess.run([sys.executable, "-m", "popsrv", "passwd", *args], input=password.encode(),
                            capture_output=True, env=twistdEnvironment(), timeout=60)
    assert result.returncode == 0, result.stderr


def test_help_auth_lists_passwd_file(moduleLauncher: Launcher, tmp_path: Path) -> None:
    """twistd popsrv --help-auth lists passwd-file, and --help-auth-type explains it."""
    listing = moduleLauncher.run(["popsrv", "--help-auth"], tmp_path)
    assert b"passwd-file" in listing.stdout
    detail = moduleLauncher.run(["popsrv", "--help-auth-type", "passwd-file"], tmp_path)
    assert b"user:{SCHEME}secret" in detail.stdout and b"ARGON2ID" in detail.stdout


def test_a_broken_file_stops_twistd_with_its_line(moduleLauncher: Launcher, tmp_path: Path) -> None:
    """A syntax error at start stops twistd with a message naming the file and line."""
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:{PLAIN}x\nnot a user line\n")
    result = moduleLauncher.run(["-n", "popsrv", "--auth", f"passwd-file:{passwd}"], tmp_path)
    assert result.returncode != 0
    assert f"--auth passwd-file: {passwd} line 2:".encode() in result.stdout


def test_the_unknown_scheme_is_logged_at_start(passwdServer: PasswdServer) -> None:
    """The line with an unknown scheme is named in one log line."""
    line = passwdServer.twistd.waitFor(r"line 9: user 'legacy' cannot log in: unknown scheme \{MD5-CRYPT\}")
    assert line is not None
    assert sum("cannot log in" in each for each in passwdServer.twistd.lines) == 1


@pytest.mark.parametrize("user", list(USERS))
def test_poplib_user_pass_every_scheme(passwdServer: PasswdServer, user: str) -> None:
    """USER/PASS logs in with every scheme and retrieves the user's message."""
    assert retrieve(userPass(passwdServer, user)) == message(user)


def test_poplib_wrong_password_and_unusable_secret(passwdServer: PasswdServer) -> None:
    """A wrong password, an unknown user and a user with an unknown scheme are refused alike."""
    for user, password in (("argon", "wrong"), ("nobody", PASSWORD), ("legacy", PASSWORD)):
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] invalid user name or password"):
            userPass(passwdServer, user, password)


@pytest.mark.parametrize("user", ["plain", "sha512"])
def test_poplib_apop_only_for_plain(passwdServer: PasswdServer, user: str) -> None:
    """APOP works for a PLAIN user and is refused for a hashed one."""
    client = poplib.POP3(HOST, passwdServer.port, timeout=SOCKET_TIMEOUT)
    try:
        if user == "plain":
            client.apop(user, PASSWORD)
            assert retrieve(client) == message(user)
        else:
            with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
                client.apop(user, PASSWORD)
    finally:
        client.close()


def scramLogin(server: PasswdServer, user: str, password: str = PASSWORD) -> poplib.POP3:
    """
    Log in with AUTH SCRAM-SHA-256 through poplib, scramp making the
    client's messages and checking the server's proof.
    """
    client = poplib.POP3(HOST, server.port, timeout=SOCKET_TIMEOUT)
    try:
        scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
        first = base64.b64encode(scram.get_client_first().encode()).decode()
        reply = client._shortcmd(f"AUTH SCRAM-SHA-256 {first}")
        scram.set_server_first(base64.b64decode(reply[2:]).decode())
        reply = client._shortcmd(base64.b64encode(scram.get_client_final().encode()).decode())
        scram.set_server_final(base64.b64decode(reply[2:]).decode())
        assert client._shortcmd("").startswith(b"+OK")
    except BaseException:
        client.close()
        raise
    return client


@pytest.mark.parametrize("user", ["scram", "plain"])
def test_poplib_scramp_scram_sha_256(passwdServer: PasswdServer, user: str) -> None:
    """SCRAM-SHA-256 logs in against stored keys and against a PLAIN secret; the client verifies the server."""
    assert retrieve(scramLogin(passwdServer, user)) == message(user)


def test_poplib_scramp_stored_salt_is_sent(passwdServer: PasswdServer) -> None:
    """The server's first message carries the stored salt and iteration count of the scram user."""
    stored = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in passwdServer.passwd.read_text().splitlines()
              if line and not line.startswith("#")}
    keys = schemes.scramKeys(stored["scram"], "SCRAM-SHA-256")
    client = poplib.POP3(HOST, passwdServer.port, timeout=SOCKET_TIMEOUT)
    try:
        scram = scramp.ScramClient(["SCRAM-SHA-256"], "scram", PASSWORD)
        reply = client._shortcmd("AUTH SCRAM-SHA-256 " + base64.b64encode(scram.get_client_first().encode()).decode())
        serverFirst = base64.b64decode(reply[2:]).decode()
        assert f",s={base64.b64encode(keys.salt).decode()},i={keys.iterations}" in serverFirst
    finally:
        client.close()


@pytest.mark.parametrize("user", ["argon", "nobody"])
def test_poplib_scramp_refused_without_keys(passwdServer: PasswdServer, user: str) -> None:
    """SCRAM for a user with another hash, or an unknown user, is refused like a wrong password."""
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        scramLogin(passwdServer, user)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("user", ["argon", "sha256", "scram"])
def test_curl_plain_and_login(passwdServer: PasswdServer, mechanism: str, user: str) -> None:
    """curl AUTH=PLAIN and AUTH=LOGIN log in against hashes and stored SCRAM keys, and retrieve the message."""
    result = curl(passwdServer.url("1"), "-u", f"{user}:{PASSWORD}", "--login-options", f"AUTH={mechanism}")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout == message(user)
    assert f"> AUTH {mechanism}".encode() in result.stderr


def test_curl_cram_md5_only_for_plain(passwdServer: PasswdServer) -> None:
    """curl AUTH=CRAM-MD5 works for the PLAIN user; a hashed user is refused."""
    good = curl(passwdServer.url("1"), "-u", f"plain:{PASSWORD}", "--login-options", "AUTH=CRAM-MD5")
    assert good.returncode == 0 and good.stdout == message("plain")
    bad = curl(passwdServer.url("1"), "-u", f"argon:{PASSWORD}", "--login-options", "AUTH=CRAM-MD5")
    assert bad.returncode == CURL_LOGIN_DENIED


def test_users_added_and_removed_while_running(passwdServer: PasswdServer) -> None:
    """The passwd tool adds, changes and removes a user while popsrv runs; each change counts at once."""
    path = str(passwdServer.passwd)
    deliver(str(passwdServer.root / "newcomer"), message("newcomer"))
    with pytest.raises(poplib.error_proto):
        userPass(passwdServer, "newcomer", "first")
    tool("add", "--scheme", "BLF-CRYPT", path, "newcomer", password="first\n")
    userPass(passwdServer, "newcomer", "first").quit()
    tool("set", path, "newcomer", password="second\n")
    assert retrieve(userPass(passwdServer, "newcomer", "second")) == message("newcomer")
    tool("del", path, "newcomer")
    with pytest.raises(poplib.error_proto):
        userPass(passwdServer, "newcomer", "second")
    assert retrieve(userPass(passwdServer, "plain")) == message("plain")


def test_a_broken_edit_keeps_the_users_working(passwdServer: PasswdServer) -> None:
    """A syntax error in a new version is logged with its line; the users of the version before still log in."""
    path = passwdServer.passwd
    before = path.read_text(encoding="utf-8")
    since = passwdServer.twistd.mark()
    try:
        replacement = path.with_name("passwd.broken")
        replacement.write_text(before + "this line has no colon\n", encoding="utf-8")
        replacement.replace(path)
        assert retrieve(userPass(passwdServer, "sha512")) == message("sha512")
        broken = len(before.split("\n"))
        passwdServer.twistd.waitFor(rf"{path} line {broken}: a line is user:.*stays in force", since=since)
    finally:
        path.write_text(before, encoding="utf-8")


def capabilities(port: int) -> List[bytes]:
    """CAPA's lines from a server, and its greeting first."""
    client = poplib.POP3(HOST, port, timeout=SOCKET_TIMEOUT)
    try:
        _, lines, _ = client._longcmd("CAPA")
        return [client.getwelcome(), *lines]
    finally:
        client.quit()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_readme_recipe_logs_in_with_curl(moduleLauncher: Launcher, tmp_path: Path, workers: int) -> None:
    """
    Users added with `python -m popsrv passwd add` (its default scheme,
    ARGON2ID) can use every way of logging in popsrv offers: CRAM-MD5, SCRAM
    and APOP, which such entries cannot verify, are not offered, so curl
    picks one that works. A {PLAIN} user added later brings them back.
    """
    passwd = tmp_path / "passwd"
    tool("add", str(passwd), "alice", password=f"{PASSWORD}\n")
    deliver(str(tmp_path / "mail" / "alice"), message("alice"))
    process = moduleLauncher.twistd(
        ["--listen", LISTEN_LOCAL, "--maildir-root", str(tmp_path / "mail"), "--auth", f"passwd-file:{passwd}",
         "--workers", str(workers)], tmp_path,
    )
    port = process.waitListening()
    for index in range(workers if workers > 1 else 0):
        process.waitFor(rf"worker {index}\] worker ready", timeout=30)
    greeting, *lines = capabilities(port)
    assert b"<" not in greeting
    assert b"SASL PLAIN LOGIN" in lines and b"USER" in lines
    result = curl(f"pop3://{HOST}:{port}/1", "-u", f"alice:{PASSWORD}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == message("alice")
    tool("add", "--scheme", "PLAIN", str(passwd), "bob", password="bobs\n")
    greeting, *lines = capabilities(port)
    assert b"<" in greeting
    assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN" in lines


def test_sasl_mechanisms_chosen_by_the_operator(moduleLauncher: Launcher, tmp_path: Path) -> None:
    """
    --sasl-mechanisms offers only the mechanisms named that the checkers
    can verify; an unknown name is a usage error.
    """
    passwd = tmp_path / "passwd"
    passwd.write_text(f"plain:{{PLAIN}}{PASSWORD}\n")
    process = moduleLauncher.twistd(
        ["--listen", LISTEN_LOCAL, "--maildir-root", str(tmp_path / "mail"), "--auth", f"passwd-file:{passwd}",
         "--sasl-mechanisms", "scram-sha-256, plain"], tmp_path,
    )
    _, *lines = capabilities(process.waitListening())
    assert b"SASL SCRAM-SHA-256 PLAIN" in lines
    refused = moduleLauncher.run(
        ["-n", "popsrv", "--auth", f"passwd-file:{passwd}", "--sasl-mechanisms", "PLAIN,GSSAPI"], tmp_path,
    )
    assert refused.returncode != 0
    assert b"--sasl-mechanisms takes names among" in refused.stdout


@pytest.mark.parametrize("servers", ["passwdServer", "passwdWorkers"])
@pytest.mark.parametrize("user", ["scram", "plain"])
def test_scram_with_an_authorization_identity(request: pytest.FixtureRequest, servers: str, user: str) -> None:
    """
    SCRAM-SHA-256 from a client that names an authorization identity equal
    to the user (as Cyrus and GNU SASL clients do) logs in, against stored
    keys and a PLAIN secret, and the server proves itself; another identity
    is refused (in one process and with workers).
    """
    passwdServer: PasswdServer = request.getfixturevalue(servers)
    client = poplib.POP3(HOST, passwdServer.port, timeout=SOCKET_TIMEOUT)
    try:
        scram = HandScramClient("SCRAM-SHA-256", user, PASSWORD, authzid=user)
        reply = client._shortcmd("AUTH SCRAM-SHA-256 " + base64.b64encode(scram.first()).decode())
        final = scram.final(base64.b64decode(reply[2:]))
        reply = client._shortcmd(base64.b64encode(final).decode())
        assert scram.serverSignatureIs(base64.b64decode(reply[2:]))
        assert client._shortcmd("").startswith(b"+OK")
        assert retrieve(client) == message(user)
    finally:
        client.close()
    other = poplib.POP3(HOST, passwdServer.port, timeout=SOCKET_TIMEOUT)
    try:
        scram = HandScramClient("SCRAM-SHA-256", user, PASSWORD, authzid="argon")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            other._shortcmd("AUTH SCRAM-SHA-256 " + base64.b64encode(scram.first()).decode())
    finally:
        other.close()
