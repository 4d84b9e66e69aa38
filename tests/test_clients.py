"""
End-to-end tests with real POP3 clients: Python's poplib, curl, fetchmail,
getmail6 and mpop fetch mail from the real popsrv (started by twistd) over
STLS (RFC 2595) and implicit TLS (RFC 8314), logging in with USER/PASS, APOP
and the SASL mechanisms, and verifying the server's certificate against a
test CA made by the tests.

The clients connect from 127.0.0.1, which the default plaintext policy
(tls-only) trusts; the tests that must show that only the mechanisms which
never send the password work use a server started with --plaintext-auth
never.  Each client runs with HOME in a temporary directory, stdin from
/dev/null and a timeout.  What it delivers is compared octet for octet with
what was stored, in the client's line-end convention: CRLF for poplib and
curl, LF for what fetchmail, getmail6 and mpop deliver.
"""

from __future__ import annotations

import contextlib
import os
import poplib
import pwd
import random
import re
import shlex
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

from popsrv import __version__
from popsrv.store.maildir import deliver, uidFor
from tests.support.certificates import makePKI
from tests.support.wire import storedLines

if TYPE_CHECKING:
    from tests.support.certificates import TestPKI
    from tests.support.servers import Launcher, Popsrv

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 30.0
# How long a client waits for the server, by its own timeout option: every
# exchange here takes milliseconds, and a hung TLS handshake should fail the
# test soon.
CLIENT_WAIT = 15
SOCKET_TIMEOUT = CLIENT_WAIT
USERS_PER_SERVER = 40
CURL_LOGIN_DENIED = 67
CURL_USE_SSL_FAILED = 64
CURL_SSL_CONNECT_ERROR = 35
CURL_PEER_FAILED_VERIFICATION = 60
FETCHMAIL_NO_MAIL = 1


# What the tests store, and what clients must deliver.


def bigMessage() -> bytes:
    """
    A message of about 180 KiB (more than a TLS record and than popsrv's
    read chunks): lines of many lengths, LF and CRLF line ends, lines that
    start with a dot and lines that are a single dot.
    """
    rng = random.Random(2595)
    parts = [
        b"Return-Path: <big@example.org>\r\nFrom: big@example.org\r\nTo: user@example.org\r\n"
        b"Subject: a big message over TLS\r\nMessage-ID: <big.3@example.org>\r\n\r\n"
    ]
    for number in range(1, 4001):
        text = b"%05d " % number + b"abcdefghij"[number % 10 :] * rng.randrange(0, 15)
        if number % 7 == 0:
            text = b"." + text
        if number % 301 == 0:
            text = b"."
        parts.append(text + (b"\r\n" if number % 3 else b"\n"))
    return b"".join(parts)


MESSAGES: Tuple[bytes, ...] = (
    b"Return-Path: <carol@example.org>\r\nFrom: Carol <carol@example.org>\r\nTo: user@example.org\r\n"
    b"Subject: dots and CRLF\r\nMessage-ID: <dots.1@example.org>\r\n\r\n"
    b".leading dot\r\n..two dots\r\n.\r\n\r\nafter a blank line\r\nlast line\r\n",
    b"Return-Path: <dave@example.org>\nFrom: dave@example.org\nTo: user@example.org\n"
    b"Subject: bare LF, no final newline\nMessage-ID: <lf.2@example.org>\n\n"
    b"first\n\n. space\n.\nthe last line has no newline",
    bigMessage(),
)


def crlfForm(stored: bytes) -> bytes:
    """
    A stored message as POP3 carries it (before dot-stuffing), as poplib
    and curl give it back: every line ends in CRLF.
    """
    return b"".join(line + b"\r\n" for line in storedLines(stored))


def lfForm(stored: bytes) -> bytes:
    """
    A stored message as fetchmail, getmail6 and mpop deliver it: every line
    ends in LF.
    """
    return b"".join(line + b"\n" for line in storedLines(stored))


def makeMaildir(path: Path) -> Path:
    """
    Create an empty Maildir (cur/, new/, tmp/) for a client to deliver to.
    """
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def maildirMessages(path: Path) -> List[bytes]:
    """
    The contents of every message in a Maildir's new/ and cur/, sorted.
    """
    found = []
    for sub in ("new", "cur"):
        directory = path / sub
        if directory.is_dir():
            found.extend((directory / name).read_bytes() for name in os.listdir(directory) if not name.startswith("."))
    return sorted(found)


def filesIn(directory: Path) -> List[bytes]:
    """
    The contents of every file in a directory, sorted.
    """
    return sorted(path.read_bytes() for path in directory.iterdir() if path.is_file())


# The servers: one with the default plaintext policy (tls-only), one with
# --plaintext-auth never; both offer STLS on their first listener and
# implicit TLS on their second.


def endpointValue(value: object) -> str:
    """
    Escape a value for a Twisted endpoint description.
    """
    return re.sub(r"([\\:=])", r"\\\1", str(value))


class TLSServer:
    """
    A running popsrv with STLS on C{port} and implicit TLS on C{tlsPort},
    whose users are handed out one per test, so tests sharing the server
    never share a maildrop.
    """

    host = HOST

    def __init__(self, server: Popsrv, tlsPort: int, pki: TestPKI) -> None:
        self.server = server
        self.port = server.port
        self.tlsPort = tlsPort
        self.pki = pki
        self.twistd = server.twistd
        self._unused: Iterator[str] = iter(sorted(server.users))

    def account(self) -> Tuple[str, str]:
        """
        A user nobody has used yet, and the user's password.
        """
        user = next(self._unused, None)
        assert user is not None, "every user of this server is taken: raise USERS_PER_SERVER"
        return user, self.server.users[user]

    def deliver(self, user: str, messages: Sequence[bytes] = MESSAGES) -> Dict[str, bytes]:
        """
        Deliver messages into a user's Maildir as an MDA would; return them
        by uid.
        """
        return {uidFor(deliver(self.server.maildir(user), message)): message for message in messages}

    def storedUids(self, user: str) -> Set[str]:
        """
        The uids of the messages in a user's Maildir, read from the files.
        """
        uids = set()
        for sub in ("cur", "new"):
            directory = os.path.join(self.server.maildir(user), sub)
            for name in os.listdir(directory) if os.path.isdir(directory) else ():
                if not name.startswith("."):
                    uids.add(uidFor(name.partition(":")[0]))
        return uids

    def loginPeer(self, user: str, since: int) -> str:
        """
        Wait for the log of a login of C{user} after position C{since} and
        return the client's address, C{127.0.0.1:PORT}.
        """
        pattern = rf"\] {re.escape(user)} logged in from (127\.0\.0\.1:\d+) with "
        return self.twistd.waitFor(pattern, since=since).group(1)

    def assertSTLSLogin(self, user: str, since: int) -> None:
        """
        Check that the server logged a login of C{user} after C{since}, in a
        session that had started TLS with STLS.
        """
        peer = self.loginPeer(user, since)
        self.twistd.waitFor(rf"TLS started with {re.escape(peer)}$", since=since)

    def assertNoLogin(self, user: str, since: int) -> None:
        """
        Check that nobody logged in as C{user} after C{since}.
        """
        logins = [line for line in self.twistd.lines[since:] if f"] {user} logged in from" in line]
        assert logins == []


def startTLSServer(launcher: Launcher, pki: TestPKI, *extra: str, mbox: bool = False) -> TLSServer:
    """
    Start popsrv with STLS on a first listener and implicit TLS on a second
    one, both on ephemeral ports of 127.0.0.1, and wait for both (serving
    mbox spools if C{mbox} is true).
    """
    implicit = (
        f"ssl:0:interface={HOST}:privateKey={endpointValue(pki.key)}:certKey={endpointValue(pki.chain)}"
    )
    users = {f"user{number:02d}": f"pw{number:02d} Tr0ub4dör,=x" for number in range(1, USERS_PER_SERVER + 1)}
    server = launcher.popsrv(
        "--tls-cert", str(pki.chain), "--tls-key", str(pki.key), "--listen", implicit, *extra, users=users,
        mbox=mbox,
    )
    first, second = server.twistd.waitListeningPorts(2)
    assert first == server.port
    return TLSServer(server, second, pki)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """
    A test CA and the server's certificate chain and key.
    """
    return makePKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def otherCA(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The certificate of a CA that did not sign the server's certificate.
    """
    return makePKI(tmp_path_factory.mktemp("other-pki")).ca


@pytest.fixture(scope="module")
def tlsServer(moduleLauncher: Launcher, pki: TestPKI) -> TLSServer:
    """
    popsrv with STLS and implicit TLS and the default --plaintext-auth
    tls-only.
    """
    return startTLSServer(moduleLauncher, pki)


@pytest.fixture(scope="module")
def strictServer(moduleLauncher: Launcher, pki: TestPKI) -> TLSServer:
    """
    popsrv with STLS and implicit TLS and --plaintext-auth never: USER/PASS,
    PLAIN and LOGIN are refused even over TLS.
    """
    return startTLSServer(moduleLauncher, pki, "--plaintext-auth", "never")


# Running clients


def executable(name: str) -> str:
    """
    The path of a client program, which must be installed.
    """
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install curl fetchmail getmail6 mpop)")
    return path


def runClient(args: Sequence[str], home: Path, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess:
    """
    Run a client with HOME (and its working directory) in C{home}, no
    input, a small environment and a timeout.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "LC_ALL": "C.UTF-8", "TMPDIR": str(home)}
    return subprocess.run(
        list(args),
        cwd=str(home),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )


def transcript(result: subprocess.CompletedProcess) -> str:
    """
    A client's output (stdout, then stderr) as text, for checks and failure
    messages.
    """
    return (result.stdout + b"\n" + result.stderr).decode("utf-8", "replace")


def writePrivate(path: Path, text: str) -> Path:
    """
    Write a configuration file holding a password, readable by its owner
    only (fetchmail and mpop insist).
    """
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


# 1: poplib


def verifyingContext(ca: Path) -> ssl.SSLContext:
    """
    A client TLS context that trusts only C{ca} and checks the host name.
    """
    context = ssl.create_default_context(cafile=str(ca))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    return context


def uidListing(client: poplib.POP3) -> Dict[int, str]:
    """
    UIDL, as message number to uid.
    """
    _, lines, _ = client.uidl()
    return {int(number): uid.decode("ascii") for number, uid in (line.split() for line in lines)}


def retrieveAll(client: poplib.POP3, stored: Dict[str, bytes]) -> Dict[int, str]:
    """
    RETR every message and check it against what was stored; return the
    numbering.
    """
    uids = uidListing(client)
    assert sorted(uids.values()) == sorted(stored)
    for number, uid in uids.items():
        response, lines, _ = client.retr(number)
        assert response == b"+OK %d octets" % len(crlfForm(stored[uid]))
        assert b"".join(line + b"\r\n" for line in lines) == crlfForm(stored[uid]), f"RETR {number} differs"
    return uids


def capabilities(client: poplib.POP3) -> Dict[str, List[str]]:
    """
    The CAPA reply, as poplib parses it.
    """
    return client.capa()


def expectedCapabilities(plaintext: bool, stls: bool) -> Dict[str, List[str]]:
    """
    What CAPA lists before login, for a session that may or may not send
    plaintext passwords and may or may not still start TLS.
    """
    capa: Dict[str, List[str]] = {
        "TOP": [], "UIDL": [], "RESP-CODES": [], "AUTH-RESP-CODE": [], "PIPELINING": [],
        "EXPIRE": ["NEVER"], "UTF8": ["USER"], "IMPLEMENTATION": [f"popsrv-{__version__}"],
        "SASL": ["SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5"] + (["PLAIN", "LOGIN"] if plaintext else []),
    }
    if plaintext:
        capa["USER"] = []
    if stls:
        capa["STLS"] = []
    return capa


def test_poplib_stls_then_user_pass_retrieves_every_message(tlsServer: TLSServer) -> None:
    """poplib: STLS verified against the test CA, then USER/PASS; RETR gives every stored message exactly."""
    user, password = tlsServer.account()
    stored = tlsServer.deliver(user)
    since = tlsServer.twistd.mark()
    client = poplib.POP3(HOST, tlsServer.port, timeout=SOCKET_TIMEOUT)
    try:
        client.stls(verifyingContext(tlsServer.pki.ca))
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert client.user(user).startswith(b"+OK")
        assert client.pass_(password).startswith(b"+OK %s has 3 messages" % user.encode())
        retrieveAll(client, stored)
        assert client.quit() == b"+OK popsrv signing off (3 messages left)"
    finally:
        client.close()
    tlsServer.assertSTLSLogin(user, since)
    assert tlsServer.storedUids(user) == set(stored)


@pytest.mark.parametrize("policy", ["tls-only", "never"])
def test_poplib_capa_drops_stls_after_stls(request: pytest.FixtureRequest, policy: str) -> None:
    """poplib.capa() lists STLS before stls() and not after; USER, PLAIN and LOGIN follow the plaintext policy."""
    server: TLSServer = request.getfixturevalue("tlsServer" if policy == "tls-only" else "strictServer")
    client = poplib.POP3(HOST, server.port, timeout=SOCKET_TIMEOUT)
    try:
        plaintext = policy == "tls-only"
        assert capabilities(client) == expectedCapabilities(plaintext, stls=True)
        client.stls(verifyingContext(server.pki.ca))
        assert capabilities(client) == expectedCapabilities(plaintext, stls=False)
        with pytest.raises(poplib.error_proto, match="TLS is already active"):
            client._shortcmd("STLS")
        client.quit()
    finally:
        client.close()


def test_poplib_pop3_ssl_user_pass_then_dele(tlsServer: TLSServer) -> None:
    """poplib.POP3_SSL (implicit TLS, CA verified): no STLS in CAPA; USER/PASS, exact RETRs, DELE all empties it."""
    user, password = tlsServer.account()
    stored = tlsServer.deliver(user)
    context = verifyingContext(tlsServer.pki.ca)
    client = poplib.POP3_SSL(HOST, tlsServer.tlsPort, context=context, timeout=SOCKET_TIMEOUT)
    try:
        assert capabilities(client) == expectedCapabilities(plaintext=True, stls=False)
        client.user(user)
        client.pass_(password)
        numbers = retrieveAll(client, stored)
        for number in numbers:
            client.dele(number)
        assert client.quit() == b"+OK popsrv signing off (maildrop empty)"
    finally:
        client.close()
    assert tlsServer.storedUids(user) == set()


@pytest.mark.parametrize("mode", ["stls", "implicit"])
def test_poplib_never_refuses_user_even_over_tls_but_apop_works(strictServer: TLSServer, mode: str) -> None:
    """With --plaintext-auth never, USER is refused before and after TLS, and poplib.apop() logs in and retrieves."""
    user, password = strictServer.account()
    stored = strictServer.deliver(user)
    context = verifyingContext(strictServer.pki.ca)
    if mode == "stls":
        client = poplib.POP3(HOST, strictServer.port, timeout=SOCKET_TIMEOUT)
    else:
        client = poplib.POP3_SSL(HOST, strictServer.tlsPort, context=context, timeout=SOCKET_TIMEOUT)
    try:
        if mode == "stls":
            with pytest.raises(poplib.error_proto) as refused:
                client.user(user)
            # No "use STLS first": under never, TLS would not help.
            assert refused.value.args[0] == b"-ERR [AUTH] plaintext authentication is not allowed on this connection"
            client.stls(context)
        with pytest.raises(poplib.error_proto) as refused:
            client.user(user)
        assert refused.value.args[0] == b"-ERR [AUTH] plaintext authentication is not allowed on this connection"
        assert client.apop(user, password).startswith(b"+OK %s has 3 messages" % user.encode())
        retrieveAll(client, stored)
        client.quit()
    finally:
        client.close()
    assert strictServer.storedUids(user) == set(stored)


def test_poplib_stls_refuses_a_certificate_from_an_untrusted_ca(tlsServer: TLSServer, otherCA: Path) -> None:
    """poplib's stls() with a context trusting another CA fails the handshake: the verification is real."""
    client = poplib.POP3(HOST, tlsServer.port, timeout=SOCKET_TIMEOUT)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.stls(verifyingContext(otherCA))
    finally:
        # The failed handshake already closed the socket.
        with contextlib.suppress(OSError):
            client.close()


# 2: curl


def curl(*args: str) -> subprocess.CompletedProcess:
    """
    Run curl verbosely (the POP3 dialogue goes to stderr), with a time
    limit of its own.
    """
    with tempfile.TemporaryDirectory(prefix="popsrv-curl-") as home:
        # -q: no .curlrc either.
        return runClient([executable("curl"), "-q", "-sS", "-v", "--max-time", str(CLIENT_WAIT), *args], Path(home))


def curlOK(*args: str) -> subprocess.CompletedProcess:
    """
    Run curl; it must succeed.
    """
    result = curl(*args)
    assert result.returncode == 0, f"curl {args} failed ({result.returncode}):\n{transcript(result)}"
    return result


def sentCommands(result: subprocess.CompletedProcess) -> List[str]:
    """
    The POP3 commands curl -v shows it sent.
    """
    return [line[2:] for line in result.stderr.decode("utf-8", "replace").splitlines() if line.startswith("> ")]


def curlFetchAll(url: str, user: str, password: str, stored: Dict[str, bytes], *options: str) -> List[str]:
    """
    With curl: UIDL, LIST, and RETR of every message, each checked against
    what was stored; return the commands of the RETR session.
    """
    credentials = ["-u", f"{user}:{password}", *options]
    uidl = curlOK(url, "-X", "UIDL", *credentials).stdout
    numbers = {int(number): uid.decode() for number, uid in (line.split() for line in uidl.splitlines())}
    assert sorted(numbers.values()) == sorted(stored)
    listing = curlOK(url, *credentials).stdout
    assert listing == b"".join(
        b"%d %d\r\n" % (number, len(crlfForm(stored[uid]))) for number, uid in sorted(numbers.items())
    )
    commands: List[str] = []
    for number, uid in numbers.items():
        result = curlOK(f"{url}{number}", *credentials)
        assert result.stdout == crlfForm(stored[uid]), f"message {number} differs"
        commands = sentCommands(result)
    return commands


def test_curl_stls_ssl_reqd_retr_and_list(tlsServer: TLSServer) -> None:
    """curl pop3:// --ssl-reqd --cacert: STLS, then UIDL, LIST and RETR of each message match what was stored."""
    user, password = tlsServer.account()
    stored = tlsServer.deliver(user)
    since = tlsServer.twistd.mark()
    commands = curlFetchAll(
        f"pop3://{HOST}:{tlsServer.port}/", user, password, stored, "--ssl-reqd", "--cacert", str(tlsServer.pki.ca)
    )
    assert commands[:2] == ["CAPA", "STLS"]
    tlsServer.assertSTLSLogin(user, since)
    assert tlsServer.storedUids(user) == set(stored)


def test_curl_pop3s_retr_and_list(tlsServer: TLSServer) -> None:
    """curl pop3s:// (implicit TLS, --cacert): UIDL, LIST and RETR of each message match, and no STLS is sent."""
    user, password = tlsServer.account()
    stored = tlsServer.deliver(user)
    url = f"pop3s://{HOST}:{tlsServer.tlsPort}/"
    commands = curlFetchAll(url, user, password, stored, "--cacert", str(tlsServer.pki.ca))
    assert "STLS" not in commands and commands[0] == "CAPA"
    assert tlsServer.storedUids(user) == set(stored)


@pytest.mark.parametrize(
    "mechanism, initialResponse",
    [("PLAIN", False), ("PLAIN", True), ("LOGIN", False), ("LOGIN", True), ("CRAM-MD5", False)],
    ids=["PLAIN", "PLAIN-sasl-ir", "LOGIN", "LOGIN-sasl-ir", "CRAM-MD5"],
)
def test_curl_sasl_over_stls(tlsServer: TLSServer, mechanism: str, initialResponse: bool) -> None:
    """curl --login-options AUTH=MECH over STLS logs in with exactly that SASL mechanism and retrieves exactly."""
    user, password = tlsServer.account()
    stored = tlsServer.deliver(user, MESSAGES[:1])
    since = tlsServer.twistd.mark()
    options = ["--ssl-reqd", "--cacert", str(tlsServer.pki.ca), "--login-options", f"AUTH={mechanism}"]
    if initialResponse:
        options.append("--sasl-ir")
    result = curlOK(f"pop3://{HOST}:{tlsServer.port}/1", "-u", f"{user}:{password}", *options)
    assert result.stdout == crlfForm(MESSAGES[0])
    logins = [command for command in sentCommands(result) if command.split(" ")[0] in ("USER", "PASS", "APOP", "AUTH")]
    assert len(logins) == 1 and logins[0].split(" ")[:2] == ["AUTH", mechanism]
    assert (len(logins[0].split(" ")) == 3) == initialResponse
    tlsServer.assertSTLSLogin(user, since)
    assert tlsServer.storedUids(user) == set(stored)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["stls", "implicit"])
def test_curl_plaintext_sasl_refused_under_never(strictServer: TLSServer, mechanism: str, mode: str) -> None:
    """Under --plaintext-auth never, PLAIN and LOGIN are not offered even over TLS: curl AUTH=PLAIN/LOGIN fails."""
    user, password = strictServer.account()
    stored = strictServer.deliver(user, MESSAGES[:1])
    since = strictServer.twistd.mark()
    if mode == "stls":
        url, tls = f"pop3://{HOST}:{strictServer.port}/1", ["--ssl-reqd"]
    else:
        url, tls = f"pop3s://{HOST}:{strictServer.tlsPort}/1", []
    result = curl(url, "-u", f"{user}:{password}", *tls, "--cacert", str(strictServer.pki.ca),
                  "--login-options", f"AUTH={mechanism}")
    assert result.returncode == CURL_LOGIN_DENIED, transcript(result)
    assert result.stdout == b""
    assert not any(command.split(" ")[0] in ("USER", "PASS", "AUTH") for command in sentCommands(result))
    strictServer.assertNoLogin(user, since)
    assert strictServer.storedUids(user) == set(stored)


@pytest.mark.parametrize("mode", ["stls", "implicit"])
def test_curl_cram_md5_under_never(strictServer: TLSServer, mode: str) -> None:
    """With --plaintext-auth never, curl AUTH=CRAM-MD5 (STLS or implicit TLS) logs in and retrieves exactly."""
    user, password = strictServer.account()
    stored = strictServer.deliver(user)
    since = strictServer.twistd.mark()
    if mode == "stls":
        url, tls = f"pop3://{HOST}:{strictServer.port}/", ["--ssl-reqd"]
    else:
        url, tls = f"pop3s://{HOST}:{strictServer.tlsPort}/", []
    commands = curlFetchAll(url, user, password, stored, *tls, "--cacert", str(strictServer.pki.ca),
                            "--login-options", "AUTH=CRAM-MD5")
    logins = [command for command in commands if command.split(" ")[0] in ("USER", "PASS", "APOP", "AUTH")]
    assert logins == ["AUTH CRAM-MD5"]
    if mode == "stls":
        strictServer.assertSTLSLogin(user, since)
    else:
        strictServer.loginPeer(user, since)
    assert strictServer.storedUids(user) == set(stored)


def test_curl_ssl_reqd_fails_without_stls(server: Popsrv) -> None:
    """curl --ssl-reqd against a server without a certificate (no STLS) fails before any login: the flag is real."""
    deliver(server.maildir(), MESSAGES[0])
    since = server.twistd.mark()
    result = curl(server.url("1"), "-u", "alice:secret", "--ssl-reqd")
    assert result.returncode == CURL_USE_SSL_FAILED, transcript(result)
    assert result.stdout == b""
    assert sentCommands(result) == ["CAPA"]
    assert not any("alice logged in" in line for line in server.twistd.lines[since:])


# 3: fetchmail


def fetchmail(
    server: TLSServer,
    home: Path,
    user: str,
    password: str,
    implicit: bool,
    protocol: str = "pop3",
    auth: Optional[str] = None,
    keep: bool = False,
    fetchall: bool = True,
    ca: Optional[Path] = None,
) -> Tuple[subprocess.CompletedProcess, Path]:
    """
    Run fetchmail once against C{server} (implicit TLS with --ssl, or STLS
    required by sslproto), verifying the certificate, delivering each
    message to a file of its own through an MDA; return the result and the
    directory of delivered messages.
    """
    out = home / "delivered"
    out.mkdir(parents=True, exist_ok=True)
    port = server.tlsPort if implicit else server.port
    options = [f"service {port}", f"protocol {protocol}", f"timeout {CLIENT_WAIT}"] + ([f"auth {auth}"] if auth else [])
    # fetchmail does not match IP addresses in certificates, so it checks
    # the name the certificate is for, localhost, while connecting to
    # 127.0.0.1.
    userOptions = [
        f'user "{user}" there', f'password "{password}"',
        "ssl" if implicit else 'sslproto "tls1.2+"',
        "sslcertck", f'sslcertfile "{ca or server.pki.ca}"', 'sslcommonname "localhost"',
        "keep" if keep else "nokeep",
    ] + (["fetchall"] if fetchall else [])
    rc = writePrivate(home / "fetchmailrc", f"poll {HOST} {' '.join(options)} {' '.join(userOptions)}\n")
    result = runClient(
        [
            executable("fetchmail"), "-v", "-f", str(rc), "--idfile", str(home / "fetchids"),
            "--pidfile", str(home / "fetchmail.pid"), "--nosyslog", "--invisible", "--norewrite",
            "--mda", f"cat > {shlex.quote(str(out))}/message.$$",
        ],
        home,
    )
    return result, out


def test_fetchmail_implicit_tls_cram_md5_deletes_by_default(strictServer: TLSServer, tmp_path: Path) -> None:
    """fetchmail --ssl --sslcertck --auth cram-md5 (server: never) delivers every message exactly, then deletes all."""
    user, password = strictServer.account()
    stored = strictServer.deliver(user)
    result, out = fetchmail(strictServer, tmp_path, user, password, implicit=True, auth="cram-md5")
    log = transcript(result)
    assert result.returncode == 0, log
    assert "POP3> AUTH CRAM-MD5" in log and "POP3> STLS" not in log
    assert filesIn(out) == sorted(lfForm(message) for message in stored.values())
    assert strictServer.storedUids(user) == set()


def test_fetchmail_stls_password_keep_leaves_the_messages(tlsServer: TLSServer, tmp_path: Path) -> None:
    """fetchmail sslproto tls1.2+ (STLS), --auth password, --keep: exact delivery, all kept, a rerun finds none new."""
    user, password = tlsServer.account()
    stored = tlsServer.deliver(user)
    since = tlsServer.twistd.mark()
    result, out = fetchmail(tlsServer, tmp_path, user, password, implicit=False, auth="password", keep=True,
                            fetchall=False)
    log = transcript(result)
    assert result.returncode == 0, log
    assert "POP3> STLS" in log and "POP3> USER " + user in log and "POP3> DELE" not in log
    assert filesIn(out) == sorted(lfForm(message) for message in stored.values())
    tlsServer.assertSTLSLogin(user, since)
    assert tlsServer.storedUids(user) == set(stored)

    # The messages are now seen: LAST says so, and fetchmail takes none.
    again, _ = fetchmail(tlsServer, tmp_path, user, password, implicit=False, auth="password", keep=True,
                         fetchall=False)
    assert again.returncode == FETCHMAIL_NO_MAIL, transcript(again)
    assert "3 messages (3 seen)" in transcript(again)
    assert len(filesIn(out)) == len(stored)
    assert tlsServer.storedUids(user) == set(stored)


def test_fetchmail_stls_cram_md5_under_never_deletes(strictServer: TLSServer, tmp_path: Path) -> None:
    """fetchmail over STLS with --auth cram-md5 (server: --plaintext-auth never) delivers exactly and deletes all."""
    user, password = strictServer.account()
    stored = strictServer.deliver(user)
    since = strictServer.twistd.mark()
    result, out = fetchmail(strictServer, tmp_path, user, password, implicit=False, auth="cram-md5")
    log = transcript(result)
    assert result.returncode == 0, log
    assert "POP3> STLS" in log and "POP3> AUTH CRAM-MD5" in log
    assert filesIn(out) == sorted(lfForm(message) for message in stored.values())
    strictServer.assertSTLSLogin(user, since)
    assert strictServer.storedUids(user) == set()


def test_fetchmail_apop_over_implicit_tls_keep(strictServer: TLSServer, tmp_path: Path) -> None:
    """fetchmail protocol APOP with --ssl (server: --plaintext-auth never) delivers exactly; --keep keeps them."""
    user, password = strictServer.account()
    stored = strictServer.deliver(user)
    result, out = fetchmail(strictServer, tmp_path, user, password, implicit=True, protocol="apop", keep=True)
    log = transcript(result)
    assert result.returncode == 0, log
    assert f"POP3> APOP {user} " in log and "POP3> DELE" not in log
    assert filesIn(out) == sorted(lfForm(message) for message in stored.values())
    assert strictServer.storedUids(user) == set(stored)


# 4: getmail6


class GetmailDestination:
    """
    A Maildir for getmail6 to deliver to.  getmail6 refuses to deliver as
    root: then it delivers as nobody, into a directory of nobody's outside
    the test's (root-only) temporary directory.
    """

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="popsrv-getmail-"))
        self.maildir = makeMaildir(self.top / "Maildir")
        self.user: Optional[str] = None
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for directory, _, _ in os.walk(self.top):
                os.chown(directory, nobody.pw_uid, nobody.pw_gid)
            self.user = "nobody"

    def remove(self) -> None:
        shutil.rmtree(self.top, ignore_errors=True)


@pytest.fixture
def getmailDestination() -> Iterator[GetmailDestination]:
    """
    A Maildir getmail6 can deliver to, removed after the test.
    """
    destination = GetmailDestination()
    try:
        yield destination
    finally:
        destination.remove()


def getmail(
    server: TLSServer,
    home: Path,
    destination: GetmailDestination,
    user: str,
    password: str,
    delete: bool,
    apop: bool = False,
    readAll: bool = True,
    ca: Optional[Path] = None,
) -> subprocess.CompletedProcess:
    """
    Run getmail6's SimplePOP3SSLRetriever (implicit TLS, certificate checked
    against the test CA) once, delivering to a Maildir.
    """
    rc = writePrivate(
        home / "getmailrc",
        "\n".join(
            [
                "[retriever]",
                "type = SimplePOP3SSLRetriever",
                f"server = {HOST}",
                f"port = {server.tlsPort}",
                f"username = {user}",
                f"password = {password}",
                f"ca_certs = {ca or server.pki.ca}",
                f"use_apop = {apop}",
                f"timeout = {CLIENT_WAIT}",
                "",
                "[destination]",
                "type = Maildir",
                f"path = {destination.maildir}/",
                *([f"user = {destination.user}"] if destination.user else []),
                "",
                "[options]",
                "verbose = 2",
                f"read_all = {readAll}",
                f"delete = {delete}",
                "delivered_to = false",
                "received = false",
                "",
            ]
        ),
    )
    getmaildir = home / "getmail"
    getmaildir.mkdir(parents=True, exist_ok=True)
    return runClient([executable("getmail"), "--rcfile", str(rc), "--getmaildir", str(getmaildir)], home)


def test_getmail_implicit_tls_delete_empties_the_maildrop(
    tlsServer: TLSServer, tmp_path: Path, getmailDestination: GetmailDestination
) -> None:
    """getmail6 SimplePOP3SSLRetriever (ca_certs) delivers exactly to a Maildir; delete = true empties the server's."""
    user, password = tlsServer.account()
    stored = tlsServer.deliver(user)
    since = tlsServer.twistd.mark()
    result = getmail(tlsServer, tmp_path, getmailDestination, user, password, delete=True)
    assert result.returncode == 0, transcript(result)
    assert maildirMessages(getmailDestination.maildir) == sorted(lfForm(message) for message in stored.values())
    tlsServer.loginPeer(user, since)
    assert tlsServer.storedUids(user) == set()


def test_getmail_implicit_tls_apop_keeps_and_remembers(
    strictServer: TLSServer, tmp_path: Path, getmailDestination: GetmailDestination
) -> None:
    """getmail6 over implicit TLS with use_apop (server: never) delivers exactly, keeps, and a rerun fetches nothing."""
    user, password = strictServer.account()
    stored = strictServer.deliver(user)
    result = getmail(strictServer, tmp_path, getmailDestination, user, password, delete=False, apop=True, readAll=False)
    assert result.returncode == 0, transcript(result)
    expected = sorted(lfForm(message) for message in stored.values())
    assert maildirMessages(getmailDestination.maildir) == expected
    assert strictServer.storedUids(user) == set(stored)

    # getmail6 remembers the UIDL of what it took; the uids are stable.
    again = getmail(strictServer, tmp_path, getmailDestination, user, password, delete=False, apop=True, readAll=False)
    assert again.returncode == 0, transcript(again)
    assert "0 messages (0 bytes) retrieved, 3 skipped" in transcript(again)
    assert maildirMessages(getmailDestination.maildir) == expected


# 5: mpop


def mpop(
    server: TLSServer,
    home: Path,
    user: str,
    password: str,
    auth: str,
    implicit: bool,
    keep: bool,
    ca: Optional[Path] = None,
) -> Tuple[subprocess.CompletedProcess, Path]:
    """
    Run mpop once for one account (TLS required, STLS or implicit, the
    certificate checked against the test CA), delivering to a Maildir;
    return the result and the Maildir.
    """
    maildir = makeMaildir(home / "Maildir")
    rc = writePrivate(
        home / "mpoprc",
        "\n".join(
            [
                "defaults",
                f"timeout {CLIENT_WAIT}",
                "received_header off",
                f"uidls_file {home / 'uidls'}",
                "",
                "account test",
                f"host {HOST}",
                f"port {server.tlsPort if implicit else server.port}",
                "tls on",
                f"tls_starttls {'off' if implicit else 'on'}",
                f"tls_trust_file {ca or server.pki.ca}",
                f"auth {auth}",
                f"user {user}",
                f"password {password}",
                f"keep {'on' if keep else 'off'}",
                f"delivery maildir {maildir}",
                "",
            ]
        ),
    )
    result = runClient([executable("mpop"), "-C", str(rc), "--debug", "test"], home)
    return result, maildir


MPOP_CASES = [
    ("scram-sha-256", "stls", "strictServer", False),
    ("cram-md5", "stls", "strictServer", True),
    ("scram-sha-1", "implicit", "strictServer", False),
    ("plain", "implicit", "tlsServer", True),
    ("apop", "stls", "strictServer", True),
    ("user", "stls", "tlsServer", False),
]


@pytest.mark.parametrize(
    "auth, mode, serverName, keep", MPOP_CASES, ids=[f"{auth}-{mode}" for auth, mode, _, _ in MPOP_CASES]
)
def test_mpop_delivers_to_a_maildir(
    request: pytest.FixtureRequest, tmp_path: Path, auth: str, mode: str, serverName: str, keep: bool
) -> None:
    """mpop (tls on, tls_trust_file) logs in with the configured method, delivers exactly; deletes unless keep on."""
    server: TLSServer = request.getfixturevalue(serverName)
    user, password = server.account()
    stored = server.deliver(user)
    since = server.twistd.mark()
    result, maildir = mpop(server, tmp_path, user, password, auth, implicit=mode == "implicit", keep=keep)
    log = transcript(result)
    assert result.returncode == 0, log
    expected = {"user": f"--> USER {user}", "apop": f"--> APOP {user}"}.get(auth, f"--> AUTH {auth.upper()}")
    lines = log.splitlines()
    assert any(line == expected or line.startswith(expected + " ") for line in lines), log
    assert ("--> STLS" in lines) == (mode == "stls")
    assert maildirMessages(maildir) == sorted(lfForm(message) for message in stored.values())
    if mode == "stls":
        server.assertSTLSLogin(user, since)
    else:
        server.loginPeer(user, since)
    assert server.storedUids(user) == (set(stored) if keep else set())
    if keep:
        # mpop remembers the uids it took: nothing is new the second time.
        again, _ = mpop(server, tmp_path, user, password, auth, implicit=mode == "implicit", keep=keep)
        assert again.returncode == 0, transcript(again)
        assert maildirMessages(maildir) == sorted(lfForm(message) for message in stored.values())
        assert "RETR" not in transcript(again)


# Every client really checks the certificate: trusting another CA, none of
# them logs in.


UNTRUSTED_CLIENTS = [
    "curl-stls", "curl-implicit", "fetchmail-stls", "fetchmail-implicit", "getmail-implicit",
    "mpop-stls", "mpop-implicit",
]


@pytest.mark.parametrize("client", UNTRUSTED_CLIENTS)
def test_clients_refuse_a_certificate_from_an_untrusted_ca(
    tlsServer: TLSServer, otherCA: Path, tmp_path: Path, client: str
) -> None:
    """Trusting another CA (of the same name), each client fails TLS and never logs in: its certificate check works."""
    user, password = tlsServer.account()
    stored = tlsServer.deliver(user, MESSAGES[:1])
    since = tlsServer.twistd.mark()
    implicit = client.endswith("-implicit")
    delivered: List[bytes] = []
    if client.startswith("curl"):
        url = f"pop3s://{HOST}:{tlsServer.tlsPort}/1" if implicit else f"pop3://{HOST}:{tlsServer.port}/1"
        result = curl(url, "-u", f"{user}:{password}", "--ssl-reqd", "--cacert", str(otherCA))
        assert result.returncode in (CURL_SSL_CONNECT_ERROR, CURL_PEER_FAILED_VERIFICATION), transcript(result)
        delivered = [result.stdout] if result.stdout else []
    elif client.startswith("fetchmail"):
        result, out = fetchmail(tlsServer, tmp_path, user, password, implicit=implicit, ca=otherCA)
        assert "Server certificate verification error" in transcript(result)
        delivered = filesIn(out)
    elif client.startswith("getmail"):
        destination = GetmailDestination()
        try:
            result = getmail(tlsServer, tmp_path, destination, user, password, delete=True, ca=otherCA)
            delivered = maildirMessages(destination.maildir)
        finally:
            destination.remove()
        assert "CERTIFICATE_VERIFY_FAILED" in transcript(result)
    else:
        result, maildir = mpop(tlsServer, tmp_path, user, password, "user", implicit=implicit, keep=False, ca=otherCA)
        assert "TLS certificate verification failed" in transcript(result)
        delivered = maildirMessages(maildir)
    assert result.returncode != 0, transcript(result)
    assert delivered == []
    tlsServer.assertNoLogin(user, since)
    assert tlsServer.storedUids(user) == set(stored)
