"""
Unit tests of the POP3 extensions: CAPA and response codes (RFC 2449),
SASL AUTH (RFC 5034), STLS (RFC 2595), UTF8 (RFC 6856), the plaintext
login policy and LOGIN-DELAY, over a string transport with a fake clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest
import scramp
from twisted.cred.checkers import FilePasswordDB
from twisted.cred.portal import Portal
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import capturedLogs
from zope.interface import implementer

from popsrv import __version__
from popsrv.errors import MaildropUnusable
from popsrv.pop3.policy import LoginPolicy, isLoopback
from popsrv.store.memory import MemoryMaildrop, MemoryRealm
from popsrv.tls import TLSSettings
from tests.support.certificates import makePKI
from tests.support.session import NoDelayTransport, Session, makePortal

REMOTE = "192.0.2.7"


@implementer(ITLSTransport)
class TLSTransport(NoDelayTransport):
    """
    A string transport that records STLS's switch to TLS.
    """

    tlsOptions = None

    def startTLS(self, options) -> None:
        self.tlsOptions = options


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    pki = makePKI(tmp_path_factory.mktemp("pki"))
    return TLSSettings(str(pki.chain), str(pki.key))


@pytest.fixture
def realm():
    realm = MemoryRealm()
    realm.maildrop("alice").add(b"Subject: hi\r\n\r\nhello\r\n")
    return realm


def session(realm, peer="127.0.0.1", **kwargs) -> Session:
    portal, _ = makePortal(realm=realm)
    return Session(portal, peer=peer, transport=TLSTransport, **kwargs)


def capabilities(s: Session) -> list[bytes]:
    out = s.send("CAPA")
    lines = out.split(b"\r\n")
    assert lines[0] == b"+OK capability list follows" and lines[-2:] == [b".", b""]
    return lines[1:-2]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# CAPA

def test_capaBeforeLogin(realm, tls):
    """
    Before login CAPA lists USER, the SASL mechanisms, STLS and the rest.
    """
    s = session(realm, tls=tls)
    assert capabilities(s) == [
        b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"USER",
        b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN", b"STLS", b"EXPIRE NEVER",
        b"UTF8 USER", b"IMPLEMENTATION popsrv-" + __version__.encode(),
    ]


def test_capaAfterLogin(realm, tls):
    """
    After login CAPA lists what it listed before (RFC 2449, section 5: the
    AUTHORIZATION state's capabilities are announced in both states).
    """
    s = session(realm, tls=tls, policy=LoginPolicy(loginDelay=0), expire=30)
    before = capabilities(s)
    s.login()
    assert capabilities(s) == before == [
        b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"USER",
        b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN", b"STLS", b"EXPIRE 30",
        b"LOGIN-DELAY 0", b"UTF8 USER", b"IMPLEMENTATION popsrv-" + __version__.encode(),
    ]


def test_capaWithoutTLS(realm):
    """
    Without a certificate there is no STLS.
    """
    assert b"STLS" not in capabilities(session(realm))


def test_remotePlaintextIsHidden(realm, tls):
    """
    From a remote address without TLS, CAPA offers neither USER nor PLAIN
    nor LOGIN, but the mechanisms that do not send the password.
    """
    caps = capabilities(session(realm, peer=REMOTE, tls=tls))
    assert b"USER" not in caps
    assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5" in caps


def test_hashedCheckersOnly(tmp_path, realm):
    """
    With a checker that keeps hashed secrets, mechanisms needing the
    plaintext secret are not offered, nor APOP (no greeting challenge).
    """
    passwd = tmp_path / "passwd"
    passwd.write_bytes(b"alice:" + hashlib.sha256(b"secret").hexdigest().encode() + b"\n")
    checker = FilePasswordDB(str(passwd), hash=lambda u, p, s: hashlib.sha256(p).hexdigest().encode())
    s = Session(Portal(realm, [checker]))
    assert s.greeting == b"+OK popsrv ready\r\n"
    assert b"SASL PLAIN LOGIN" in capabilities(s)
    assert s.send("AUTH CRAM-MD5") == b'-ERR unsupported authentication mechanism "CRAM-MD5"\r\n'


# Plaintext policy

def test_userPassRefusedRemotely(realm, tls):
    """
    USER from a remote address without TLS is refused with [AUTH] naming
    STLS; APOP still works.
    """
    s = session(realm, peer=REMOTE, tls=tls)
    assert s.send("USER alice") == (
        b"-ERR [AUTH] plaintext authentication is not allowed on this connection; use STLS first\r\n"
    )
    digest = hashlib.md5(s.protocol.challenge + b"secret").hexdigest()
    assert s.send(f"APOP alice {digest}").startswith(b"+OK alice has 1 message")


def test_plaintextAfterSTLS(realm, tls):
    """
    After STLS a remote client may use USER/PASS.
    """
    s = session(realm, peer=REMOTE, tls=tls)
    assert s.send("STLS") == b"+OK begin TLS negotiation\r\n"
    assert s.transport.tlsOptions is tls.options
    assert s.login().startswith(b"+OK alice has 1 message")


@pytest.mark.parametrize("policy, peer, allowed", [
    ("always", REMOTE, True), ("never", "127.0.0.1", False), ("tls-only", "127.0.0.1", True),
    ("tls-only", "::1", True), ("tls-only", "::ffff:127.0.0.1", True), ("tls-only", REMOTE, False),
])
def test_plaintextPolicies(realm, policy, peer, allowed):
    """
    always, never and tls-only decide USER/PASS by connection.
    """
    s = session(realm, peer=peer, policy=LoginPolicy(policy))
    assert s.send("USER alice").startswith(b"+OK" if allowed else b"-ERR [AUTH]")


def test_isLoopback():
    """
    Loopback detection covers IPv4, IPv6 and mapped addresses.
    """
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    assert isLoopback(IPv4Address("TCP", "127.8.9.10", 1))
    assert isLoopback(IPv6Address("TCP", "::1", 1))
    assert not isLoopback(IPv4Address("TCP", "10.0.0.1", 1))
    assert not isLoopback(IPv6Address("TCP", "fe80::1%eth0", 1))
    assert isLoopback(UNIXAddress("/run/popsrv.sock"))


def test_aProxiedClientIsLocalOnlyIfBothHopsAre():
    """
    A client behind a proxy (its address from a PROXY header) is local
    only if its own address is loopback and so is the proxy's connection:
    a remote client is not local because the proxy connects from
    127.0.0.1, and a client on the proxy's loopback is not local if the
    proxy is elsewhere.
    """
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    from popsrv.wire.proxied import ProxiedAddress

    local, remote = IPv4Address("TCP", "127.0.0.1", 40000), IPv4Address("TCP", "192.0.2.1", 40000)
    assert not isLoopback(ProxiedAddress(IPv4Address("TCP", "192.0.2.7", 5555), local))
    assert not isLoopback(ProxiedAddress(IPv6Address("TCP", "2001:db8::7", 5555), UNIXAddress(b"/run/p.sock")))
    assert not isLoopback(ProxiedAddress(IPv4Address("TCP", "127.0.0.5", 5555), remote))
    assert isLoopback(ProxiedAddress(IPv4Address("TCP", "127.0.0.5", 5555), local))
    assert isLoopback(ProxiedAddress(IPv6Address("TCP", "::1", 5555), UNIXAddress(b"/run/p.sock")))
    assert not LoginPolicy().plaintextAllowed(False, ProxiedAddress(IPv4Address("TCP", "192.0.2.7", 1), local))
    assert LoginPolicy().plaintextAllowed(True, ProxiedAddress(IPv4Address("TCP", "192.0.2.7", 1), local))


# STLS

def test_stlsDiscardsPipelinedPlaintext(realm, tls):
    """
    Commands pipelined after STLS, before the handshake, are discarded:
    they never run (the STARTTLS command-injection bug class).
    """
    s = session(realm, tls=tls)
    with capturedLogs() as events:
        out = s.feed(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
    assert out == b"+OK begin TLS negotiation\r\n"
    assert any(e.get("event") == "stls-injection" and e["count"] == 25 for e in events)
    assert s.send("PASS secret") == b"-ERR give USER before PASS\r\n"


def test_stlsForgetsUser(realm, tls):
    """
    A USER given before STLS does not survive it.
    """
    s = session(realm, tls=tls)
    s.send("USER alice")
    s.send("STLS")
    assert s.send("PASS secret") == b"-ERR give USER before PASS\r\n"


def test_stlsErrors(realm, tls):
    """
    STLS twice, after login, or without a certificate is an error.
    """
    s = session(realm, tls=tls)
    s.send("STLS")
    assert s.send("STLS") == b"-ERR TLS is already active\r\n"
    assert b"STLS" not in capabilities(s)
    s.login()
    assert s.send("STLS") == b"-ERR STLS is not allowed after login\r\n"
    assert session(realm).send("STLS") == b"-ERR STLS is not available on this server\r\n"


# SASL AUTH

def test_authListsMechanisms(realm):
    """
    AUTH without arguments lists the mechanisms (RFC 1734's form).
    """
    assert session(realm).send("AUTH") == (
        b"+OK methods follow\r\nSCRAM-SHA-256\r\nSCRAM-SHA-1\r\nCRAM-MD5\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    )


def test_authPlainInitialResponse(realm):
    """
    AUTH PLAIN with an initial response logs in.
    """
    s = session(realm)
    with capturedLogs() as events:
        assert s.send(b"AUTH PLAIN " + b64(b"\0alice\0secret")) == b"+OK alice has 1 message (22 octets)\r\n"
    (login,) = [e for e in events if e.get("event") == "login"]
    assert login["mechanism"] == "SASL PLAIN" and login["tls"] is False


def test_authPlainContinuation(realm):
    """
    AUTH PLAIN without an initial response gets an empty challenge.
    """
    s = session(realm)
    assert s.send("AUTH PLAIN") == b"+ \r\n"
    assert s.send(b64(b"alice\0alice\0secret")).startswith(b"+OK alice has")


def test_authPlainWrongPassword(realm):
    """
    A wrong password over SASL is the same [AUTH] failure as with PASS,
    and counts towards the limit.
    """
    s = session(realm)
    for _ in range(2):
        assert s.send(b"AUTH PLAIN " + b64(b"\0alice\0nope")) == b"-ERR [AUTH] invalid user name or password\r\n"
    assert s.send(b"AUTH PLAIN " + b64(b"\0alice\0other\0x")).startswith(b"-ERR [AUTH]")
    assert s.closed


def test_authPlainOtherAuthzid(realm):
    """
    PLAIN with an authorization identity other than the user fails.
    """
    s = session(realm)
    assert s.send(b"AUTH PLAIN " + b64(b"bob\0alice\0secret")).startswith(b"-ERR [AUTH]")


def test_authLogin(realm):
    """
    AUTH LOGIN asks for the user name and the password.
    """
    s = session(realm)
    assert s.send("AUTH LOGIN") == b"+ " + b64(b"Username:") + b"\r\n"
    assert s.send(b64(b"alice")) == b"+ " + b64(b"Password:") + b"\r\n"
    assert s.send(b64(b"secret")).startswith(b"+OK alice has")


def test_authCramMD5(realm):
    """
    AUTH CRAM-MD5 challenges with the session's <digits.time@host>.
    """
    s = session(realm)
    out = s.send("AUTH CRAM-MD5")
    challenge = base64.b64decode(out[2:-2])
    assert challenge == s.protocol.challenge
    digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest()
    assert s.send(b64(b"alice " + digest.encode())).startswith(b"+OK alice has")


@pytest.mark.parametrize("name", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_authScram(realm, name):
    """
    A SCRAM exchange with scramp's client logs in, and the client accepts
    the server's signature, sent as a last challenge before +OK.
    """
    s = session(realm)
    client = scramp.ScramClient([name], "alice", "secret")
    out = s.send(f"AUTH {name} " + b64(client.get_client_first().encode()).decode())
    assert out.startswith(b"+ ")
    client.set_server_first(base64.b64decode(out[2:-2]).decode())
    out = s.send(b64(client.get_client_final().encode()))
    assert out.startswith(b"+ ")
    client.set_server_final(base64.b64decode(out[2:-2]).decode())
    assert s.send("").startswith(b"+OK alice has")


def test_authScramWrongPassword(realm):
    """
    SCRAM with a wrong password fails with [AUTH].
    """
    s = session(realm)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "wrong")
    out = s.send(b"AUTH SCRAM-SHA-256 " + b64(client.get_client_first().encode()))
    client.set_server_first(base64.b64decode(out[2:-2]).decode())
    assert s.send(b64(client.get_client_final().encode())) == b"-ERR [AUTH] invalid user name or password\r\n"


def test_authCancelAndErrors(realm):
    """
    "*" cancels, bad base64 is refused, an unknown mechanism is refused;
    none of them counts as a failed login, and the session goes on.
    """
    s = session(realm)
    s.send("AUTH LOGIN")
    assert s.send("*") == b"-ERR authentication cancelled\r\n"
    s.send("AUTH LOGIN")
    assert s.send("!!!") == b"-ERR invalid base64 data\r\n"
    assert s.send("AUTH PLAIN !!!") == b"-ERR invalid base64 data\r\n"
    assert s.send("AUTH GSSAPI") == b'-ERR unsupported authentication mechanism "GSSAPI"\r\n'
    assert s.login().startswith(b"+OK alice has")


def test_authPipelinedLinesWait(realm):
    """
    Commands pipelined behind an AUTH exchange run only after it.
    """
    s = session(realm)
    out = s.feed(b"AUTH PLAIN\r\n" + b64(b"\0alice\0secret") + b"\r\nSTAT\r\n")
    assert out == b"+ \r\n+OK alice has 1 message (22 octets)\r\n+OK 1 22\r\n"


def test_authPlainRefusedRemotely(realm, tls):
    """
    SASL PLAIN from a remote address without TLS is refused like USER.
    """
    s = session(realm, peer=REMOTE, tls=tls)
    assert s.send(b"AUTH PLAIN " + b64(b"\0alice\0secret")).startswith(
        b"-ERR [AUTH] plaintext authentication is not allowed"
    )


def test_authLongInitialResponse(realm):
    """
    An AUTH line may be longer than the 512 octets of other commands.
    """
    s = session(realm)
    out = s.send(b"AUTH PLAIN " + b64(b"\0alice\0" + b"x" * 1000))
    assert out == b"-ERR [AUTH] invalid user name or password\r\n"


# UTF8, LOGIN-DELAY, response codes

def test_utf8(realm):
    """
    UTF8 is accepted, and UTF-8 user names and passwords log in.
    """
    realm.maildrop("jos\u00e9").add(b"Subject: x\r\n\r\ny\r\n")
    portal, _ = makePortal({"jos\u00e9": "pa\u00df"}, realm=realm)
    s = Session(portal)
    assert s.send("UTF8") == b"+OK UTF8 enabled\r\n"
    assert s.login("jos\u00e9", "pa\u00df").startswith("+OK jos\u00e9 has 1 message".encode())


def test_loginDelay(realm):
    """
    A second login within the delay gets [LOGIN-DELAY]; later it works.
    """
    s = session(realm, policy=LoginPolicy(loginDelay=60))
    s.login()
    s.send("QUIT")
    again = Session(s.factory.portal, clock=s.clock, policy=s.factory.policy)
    assert again.login() == b"-ERR [LOGIN-DELAY] wait 60 seconds between logins\r\n"
    s.clock.advance(30)
    again.send("CAPA")  # within the login timeout
    s.clock.advance(30)
    assert again.login().startswith(b"+OK alice has")


def test_unusableMaildrop(realm):
    """
    A maildrop that cannot be used until repaired gets [SYS/PERM].
    """

    class Broken(MemoryMaildrop):
        def lock(self):
            raise MaildropUnusable("cur is a symbolic link")

    realm.maildrops["alice"] = Broken("alice")
    s = session(realm)
    with capturedLogs():
        assert s.login() == b"-ERR [SYS/PERM] maildrop cannot be used, contact the administrator\r\n"


def test_implicitTLSIsSecure(realm, tls):
    """
    A connection that is TLS from the start (an ssl: listener, RFC 8314)
    offers no STLS and allows plaintext logins from anywhere under
    tls-only.
    """
    from twisted.internet.interfaces import INegotiated
    from zope.interface import directlyProvides

    class Negotiated(TLSTransport):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            directlyProvides(self, INegotiated)

    portal, _ = makePortal(realm=realm)
    s = Session(portal, peer=REMOTE, transport=Negotiated, tls=tls)
    caps = capabilities(s)
    assert b"STLS" not in caps and b"USER" in caps
    assert s.login().startswith(b"+OK alice has")


def test_readGateWaitsForTheHandshake(realm, tls):
    """
    Over TLS the read gate is registered only once the handshake is done:
    before that the TLS layer may pause producers while it holds back the
    greeting, and pausing reads would stall the handshake itself.
    """
    from twisted.internet.interfaces import INegotiated
    from zope.interface import directlyProvides

    class Negotiated(TLSTransport):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            directlyProvides(self, INegotiated)

    portal, _ = makePortal(realm=realm)
    implicit = Session(portal, transport=Negotiated)
    assert implicit.transport.producer is None
    implicit.protocol.handshakeCompleted()
    assert implicit.transport.streaming is True

    s = session(realm, tls=tls)
    assert s.transport.producer is not None
    s.send("STLS")
    assert s.transport.producer is None
    s.protocol.handshakeCompleted()
    assert s.transport.producer is not None and s.transport.streaming


# Regressions from review

def test_saslFailurePacedFromLastResponse(realm):
    """
    A SASL login that fails is answered a second after the client's last
    response, however long the exchange took: no quicker answer for an
    unknown user.
    """
    s = session(realm, authFailureDelay=1.0)
    assert s.send("AUTH PLAIN") == b"+ \r\n"
    s.clock.advance(5)
    assert s.send(b64(b"\0nobody\0secret")) == b""
    s.clock.advance(0.9)
    assert s.output() == b""
    s.clock.advance(0.1)
    assert s.output() == b"-ERR [AUTH] invalid user name or password\r\n"


def test_gateRegisteredOnFirstLineOverTLS(realm):
    """
    Over TLS through a wrapper that never reports the handshake, the read
    gate is registered when the first line arrives (it is readable, so the
    handshake is done).
    """
    from twisted.internet.interfaces import INegotiated
    from zope.interface import directlyProvides

    class Negotiated(TLSTransport):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            directlyProvides(self, INegotiated)

    portal, _ = makePortal(realm=realm)
    s = Session(portal, transport=Negotiated)
    assert s.transport.producer is None
    s.send("NOOP")
    assert s.transport.producer is not None and s.transport.streaming


def test_loginDelayCountsOnlyLoginsThatWorked(realm):
    """
    A login refused with [IN-USE] does not start the login delay.
    """
    s = session(realm, policy=LoginPolicy(loginDelay=60), loginTimeout=None)
    s.clock.advance(100)
    s.login()
    refused = Session(s.factory.portal, clock=s.clock, policy=s.factory.policy, loginTimeout=None)
    s.clock.advance(70)
    assert refused.login().startswith(b"-ERR [IN-USE]")
    s.send("QUIT")
    s.lose()
    s.clock.advance(10)
    third = Session(s.factory.portal, clock=s.clock, policy=s.factory.policy)
    assert third.login().startswith(b"+OK alice has")


def test_unnamedUnixPeerIsLocal():
    """
    A peer on a UNIX socket (whose address has no name) is local.
    """
    from twisted.internet.address import UNIXAddress

    assert isLoopback(UNIXAddress(None))


def test_stlsClearsAReadPause(realm, tls):
    """
    If the client's unread replies had paused reading when STLS switches to
    TLS, reading resumes, or the handshake could never be read.
    """


    class FullBuffer(TLSTransport):
        def write(self, data):
            super().write(data)
            if b"begin TLS" in data and self.producer is not None:
                self.producer.pauseProducing()

    portal, _ = makePortal(realm=realm)
    s = Session(portal, transport=FullBuffer, tls=tls)
    assert s.send("STLS") == b"+OK begin TLS negotiation\r\n"
    assert not s.protocol.paused and s.transport.producerState == "producing"


def test_stlsNeedsATLSCapableTransport(realm, tls):
    """
    On a transport that cannot start TLS, STLS is not offered and refused
    before any +OK.
    """
    portal, _ = makePortal(realm=realm)
    s = Session(portal, tls=tls)
    assert b"STLS" not in capabilities(s)
    assert s.send("STLS") == b"-ERR STLS is not available on this server\r\n"


def test_neverPolicyDoesNotSuggestSTLS(realm, tls):
    """
    Under --plaintext-auth never the refusal does not suggest STLS, which
    would not help.
    """
    s = session(realm, tls=tls, policy=LoginPolicy("never"))
    assert s.send("USER alice") == b"-ERR [AUTH] plaintext authentication is not allowed on this connection\r\n"


def test_onlyVerifiableWaysOfLoggingInAreOffered(tmp_path):
    """
    With a passwd file of hashed secrets only, CAPA offers PLAIN and LOGIN
    but no CRAM-MD5 or SCRAM, and the greeting has no APOP challenge; a
    {PLAIN} user brings them back (the file is read again when it changes);
    the operator's choice narrows what is offered.
    """
    from popsrv.auth.checkers import StoredSecretChecker
    from popsrv.auth.passwdfile import PasswdFile
    from popsrv.auth.schemes import hashPassword

    passwd = tmp_path / "passwd"
    passwd.write_text("alice:" + hashPassword("secret", "SHA256-CRYPT") + "\n")
    checker = StoredSecretChecker(PasswdFile(str(passwd)), runner=lambda function, *args: function(*args))
    portal = Portal(MemoryRealm(), [checker])
    s = Session(portal)
    assert b"<" not in s.greeting
    assert b"SASL PLAIN LOGIN" in capabilities(s)
    passwd.write_text(passwd.read_text() + "bob:{PLAIN}hunter2\n")
    os.utime(passwd, ns=(0, 10**18))
    s = Session(portal)
    assert b"<" in s.greeting
    assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN" in capabilities(s)
    s = Session(portal, saslMechanisms=["CRAM-MD5", "LOGIN"])
    assert b"SASL CRAM-MD5 LOGIN" in capabilities(s)


@pytest.mark.parametrize("lines, user", [
    ([b"AUTH PLAIN " + base64.b64encode(b"mallory\0bob\0S3kr1t")], "bob"),
    ([b"AUTH LOGIN", base64.b64encode(b"carol"), base64.b64encode(b"S3kr1t\0h1dd3n")], "carol"),
    ([b"AUTH CRAM-MD5", base64.b64encode(b"dave 0123")], "dave"),
    ([b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,n=erin,r=abcdefghijklmnop"), base64.b64encode(b"garbage")],
     "erin"),
    ([b"AUTH LOGIN", base64.b64encode(b"\x1b[31mevil\x00")], "?[31mevil?"),
])
def test_failedSASLLoginsLogTheUserTried(lines, user):
    """
    A SASL exchange that fails before the checker logs the user name the
    client gave (printable, however hostile), never the password.
    """
    portal, _ = makePortal({"bob": "secret"})
    s = Session(portal)
    with capturedLogs() as events:
        for line in lines:
            out = s.send(line)
    assert out.startswith(b"-ERR [AUTH]")
    [failed] = [e for e in events if e.get("event") == "login-failed"]
    assert failed["user"] == user
    assert "S3kr1t" not in str(failed) and "h1dd3n" not in str(failed)
