"""
Tests for L{popsrv.auth.checkers.StoredSecretChecker}: every kind of credentials
against every scheme, unknown users, a source that is unavailable (through
the protocol, which must answer C{-ERR [SYS/TEMP]}), slow hashes run by the
runner in other threads with bounded concurrency, and SCRAM exchanges
against stored keys, driven by scramp's client through the real protocol.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional

import pytest
import scramp
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from popsrv.auth import sasl, schemes
from popsrv.auth.checkers import StoredSecretChecker
from popsrv.auth.credentials import APOPCredentials, CramMD5Credentials
from popsrv.errors import CredentialsUnavailable
from popsrv.interfaces import IScramCredentials, IScramParameters, ISecretSource, ScramParameters
from popsrv.store.memory import MemoryRealm
from tests.support.session import Session

CHALLENGE = b"<4711.1700000000@pop.example>"
PASSWORD = "pässword"
SCHEMES = ["ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "SCRAM-SHA-256", "PLAIN"]
_HASHED: Dict[str, str] = {}


def stored(scheme: str) -> str:
    """
    The stored secret of PASSWORD in C{scheme}, made once per test run.
    """
    if scheme not in _HASHED:
        _HASHED[scheme] = schemes.hashPassword(PASSWORD, scheme)
    return _HASHED[scheme]


@implementer(ISecretSource)
class DictSource:
    """
    Secrets from a dict (text user name to stored secret); C{unavailable}
    makes every lookup fail with L{CredentialsUnavailable}; C{deferred}
    answers with a L{Deferred}.
    """

    def __init__(self, secrets: Dict[str, str], unavailable: bool = False, deferred: bool = False) -> None:
        self.secrets = secrets
        self.unavailable = unavailable
        self.deferred = deferred
        self.lookups = 0

    def secretFor(self, username: bytes):
        self.lookups += 1
        if self.unavailable:
            error = CredentialsUnavailable("the database at db.example:5432 does not answer")
            if self.deferred:
                return defer.fail(error)
            raise error
        secret = self.secrets.get(username.decode("utf-8"))
        return defer.succeed(secret) if self.deferred else secret


class ThreadRunner:
    """
    A runner that does its work in real threads and hands the results back
    when the test calls L{drain} (the test's own thread stands in for the
    reactor's).

    @ivar threads: the idents of the threads that ran work.
    @ivar calls: the functions run, in order.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=8)
        self._pending: list = []
        self.threads: set = set()
        self.calls: list = []

    def __call__(self, function, *args) -> defer.Deferred:
        result: defer.Deferred = defer.Deferred()
        self.calls.append(function)
        self._pending.append((self._pool.submit(self._run, function, *args), result))
        return result

    def _run(self, function, *args):
        self.threads.add(threading.get_ident())
        return function(*args)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def drain(self) -> None:
        """
        Deliver every result, including those of work submitted meanwhile.
        """
        while self._pending:
            future, result = self._pending.pop(0)
            try:
                value = future.result(timeout=60)
            except Exception:
                result.errback(Failure())
            else:
                result.callback(value)

    def close(self) -> None:
        self._pool.shutdown()


@pytest.fixture
def runner():
    runner = ThreadRunner()
    yield runner
    runner.close()


def outcome(d: defer.Deferred, runner: Optional[ThreadRunner] = None):
    """
    Run the runner's work to completion and return what C{d} fired with
    (a L{Failure} included).
    """
    if runner is not None:
        runner.drain()
    results: list = []
    d.addBoth(results.append)
    assert results, "the check did not finish"
    return results[0]


def makeChecker(runner, **users) -> StoredSecretChecker:
    secrets = {name: stored(scheme) for name, scheme in users.items()}
    return StoredSecretChecker(DictSource(secrets), runner)


# The checker on its own


def test_providesItsInterfaces(runner):
    """The checker provides ICredentialsChecker and IScramParameters."""
    checker = makeChecker(runner)
    verifyObject(ICredentialsChecker, checker)
    verifyObject(IScramParameters, checker)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("deferred", [False, True], ids=["value", "deferred"])
def test_usernamePasswordEveryScheme(runner, scheme, deferred):
    """USER/PASS, PLAIN and LOGIN: the right password logs in, a wrong one does not, for every scheme."""
    checker = StoredSecretChecker(DictSource({"alice": stored(scheme)}, deferred=deferred), runner)
    good = outcome(checker.requestAvatarId(UsernamePassword(b"alice", PASSWORD.encode())), runner)
    assert good == b"alice"
    bad = outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"password")), runner)
    assert isinstance(bad, Failure) and bad.check(UnauthorizedLogin)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_slowSchemesRunInTheRunnerPlainDoesNot(runner, scheme):
    """Every hash but PLAIN is verified by the runner, in another thread; PLAIN needs no thread."""
    checker = makeChecker(runner, alice=scheme)
    d = checker.requestAvatarId(UsernamePassword(b"alice", PASSWORD.encode()))
    if scheme == "PLAIN":
        assert runner.pending == 0 and d.called
    else:
        assert runner.pending == 1 and not d.called
    assert outcome(d, runner) == b"alice"
    assert threading.get_ident() not in runner.threads


def test_unknownUserCostsAHash(runner):
    """An unknown user is checked against a dummy hash of the default scheme, in the runner, and refused."""
    checker = makeChecker(runner, alice="PLAIN")
    d = checker.requestAvatarId(UsernamePassword(b"mallory", PASSWORD.encode()))
    assert runner.pending == 1
    failure = outcome(d, runner)
    assert failure.check(UnauthorizedLogin)
    assert checker._dummy is not None and checker._dummy.startswith("{ARGON2ID}")


@pytest.mark.parametrize("secret", ["{UNKNOWN}x", "no scheme", "{SHA512-CRYPT}broken"])
def test_unusableSecretCannotLogIn(runner, secret):
    """A user whose secret has an unknown scheme or does not parse cannot log in, not even with that text."""
    checker = StoredSecretChecker(DictSource({"alice": secret}), runner)
    for password in (secret.encode(), b"x", b"broken"):
        failure = outcome(checker.requestAvatarId(UsernamePassword(b"alice", password)), runner)
        assert failure.check(UnauthorizedLogin)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_apopOnlyAgainstPlain(runner, scheme):
    """APOP verifies against a PLAIN secret only; every hash refuses it."""
    checker = makeChecker(runner, alice=scheme)
    digest = hashlib.md5(CHALLENGE + PASSWORD.encode()).hexdigest().encode()
    result = outcome(checker.requestAvatarId(APOPCredentials(CHALLENGE, b"alice", digest)), runner)
    if scheme == "PLAIN":
        assert result == b"alice"
    else:
        assert result.check(UnauthorizedLogin)
    assert runner.pending == 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cramMD5OnlyAgainstPlain(runner, scheme):
    """CRAM-MD5 verifies against a PLAIN secret only."""
    checker = makeChecker(runner, alice=scheme)
    digest = hmac.new(PASSWORD.encode(), CHALLENGE, hashlib.md5).hexdigest().encode()
    result = outcome(checker.requestAvatarId(CramMD5Credentials(CHALLENGE, b"alice", digest)), runner)
    assert (result == b"alice") if scheme == "PLAIN" else result.check(UnauthorizedLogin)
    wrong = hmac.new(b"wrong", CHALLENGE, hashlib.md5).hexdigest().encode()
    assert outcome(checker.requestAvatarId(CramMD5Credentials(CHALLENGE, b"alice", wrong))).check(UnauthorizedLogin)


def test_hashedCredentialsOfUnknownUser(runner):
    """APOP for an unknown user is refused."""
    checker = makeChecker(runner, alice="PLAIN")
    digest = hashlib.md5(CHALLENGE + PASSWORD.encode()).hexdigest().encode()
    assert outcome(checker.requestAvatarId(APOPCredentials(CHALLENGE, b"bob", digest))).check(UnauthorizedLogin)


@pytest.mark.parametrize("deferred", [False, True], ids=["raised", "failed"])
def test_unavailableSourceIsNotUnauthorized(runner, deferred):
    """CredentialsUnavailable from the source comes through as itself, never as a wrong password."""
    checker = StoredSecretChecker(DictSource({}, unavailable=True, deferred=deferred), runner)
    failure = outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"x")), runner)
    assert failure.check(CredentialsUnavailable) and not failure.check(UnauthorizedLogin)
    failure = outcome(checker.scramParameters(b"alice", "SCRAM-SHA-256"))
    assert failure.check(CredentialsUnavailable)


def test_concurrencyIsBounded(runner):
    """At most `concurrency` hashes are handed to the runner at once; the rest wait their turn."""
    checker = StoredSecretChecker(DictSource({"alice": stored("SHA256-CRYPT")}), runner, concurrency=2)
    logins = [checker.requestAvatarId(UsernamePassword(b"alice", PASSWORD.encode())) for _ in range(7)]
    assert runner.pending == 2 and checker.busy == 2 and checker.waiting == 5
    runner.drain()
    assert [outcome(d) for d in logins] == [b"alice"] * 7
    assert checker.busy == 0 and checker.waiting == 0 and len(runner.calls) == 7


def test_tooManyWaitingIsUnavailable(runner):
    """Past maxWaiting queued hashes, a login is refused as unavailable (try later), not as a wrong password."""
    checker = StoredSecretChecker(DictSource({"alice": stored("SHA256-CRYPT")}), runner, concurrency=1, maxWaiting=2)
    logins = [checker.requestAvatarId(UsernamePassword(b"alice", PASSWORD.encode())) for _ in range(4)]
    assert outcome(logins[3]).check(CredentialsUnavailable)
    runner.drain()
    assert [outcome(d) for d in logins[:3]] == [b"alice"] * 3


def test_scramParameters(runner):
    """scramParameters gives the stored salt and iterations for SCRAM keys of that mechanism, else None."""
    checker = makeChecker(runner, alice="SCRAM-SHA-256", bob="PLAIN", carol="ARGON2ID")
    keys = schemes.scramKeys(stored("SCRAM-SHA-256"), "SCRAM-SHA-256")
    assert outcome(checker.scramParameters(b"alice", "SCRAM-SHA-256")) == ScramParameters(keys.salt, 4096)
    for user, mechanism in [(b"alice", "SCRAM-SHA-1"), (b"bob", "SCRAM-SHA-256"), (b"carol", "SCRAM-SHA-256"),
                            (b"nobody", "SCRAM-SHA-256")]:
        assert outcome(checker.scramParameters(user, mechanism)) is None


def test_sourceMustReturnText(runner):
    """A source that returns something else than text is a bug: not a wrong password."""
    checker = StoredSecretChecker(DictSource({"alice": b"{PLAIN}x"}), runner)
    failure = outcome(checker.requestAvatarId(UsernamePassword(b"alice", b"x")))
    assert failure.check(TypeError)


# SCRAM exchanges


def scramLogin(checker, runner, user: str, password: str, mechanism: str = "SCRAM-SHA-256"):
    """
    Run a SCRAM exchange with scramp's client and an exchange that looks
    salts up through C{checker}; return the client, the exchange, the
    server-first message and the checker's result.
    """
    client = scramp.ScramClient([mechanism], user, password)
    exchange = sasl.mechanism(mechanism).exchange(CHALLENGE, checker.scramParameters)
    step = outcome(exchange.step(client.get_client_first().encode()))
    assert isinstance(step, sasl.Challenge)
    serverFirst = step.data.decode()
    client.set_server_first(serverFirst)
    credentials = exchange.step(client.get_client_final().encode())
    verifyObject(IScramCredentials, credentials)
    return client, exchange, serverFirst, outcome(checker.requestAvatarId(credentials), runner)


def test_scramAgainstStoredKeys(runner):
    """SCRAM-SHA-256 logs in against stored keys: the stored salt and iterations go out, the client accepts."""
    checker = makeChecker(runner, alice="SCRAM-SHA-256")
    client, exchange, serverFirst, result = scramLogin(checker, runner, "alice", PASSWORD)
    keys = schemes.scramKeys(stored("SCRAM-SHA-256"), "SCRAM-SHA-256")
    assert f"s={base64.b64encode(keys.salt).decode()},i=4096" in serverFirst
    assert result == b"alice"
    client.set_server_final(exchange.successData().decode())
    assert runner.calls == []


def test_scramAgainstStoredKeysWrongPassword(runner):
    """A wrong password against stored keys is refused."""
    checker = makeChecker(runner, alice="SCRAM-SHA-256")
    _, exchange, _, result = scramLogin(checker, runner, "alice", "wrong")
    assert result.check(UnauthorizedLogin)
    assert exchange.successData() is None


def test_scramStoredKeysOfDovecotTexts(runner):
    """Keys stored with other iterations (Dovecot lets operators choose) are sent and verified as stored."""
    keys = schemes.deriveScramKeys("SCRAM-SHA-256", b"secret", b"0123456789abcdef", 5000)
    checker = StoredSecretChecker(DictSource({"alice": keys.text()}), runner)
    _, _, serverFirst, result = scramLogin(checker, runner, "alice", "secret")
    assert f"s={base64.b64encode(b'0123456789abcdef').decode()},i=5000" in serverFirst
    assert result == b"alice"


def test_scramAgainstPlainStillWorks(runner):
    """A PLAIN user logs in with SCRAM-SHA-256 and SCRAM-SHA-1, the keys derived in the runner."""
    checker = makeChecker(runner, bob="PLAIN")
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
        client, exchange, _, result = scramLogin(checker, runner, "bob", PASSWORD, mechanism)
        assert result == b"bob"
        client.set_server_final(exchange.successData().decode())
    assert len(runner.calls) == 2


@pytest.mark.parametrize("user", ["alice", "carol", "nobody"])
def test_scramNoKeysCannotLogIn(runner, user):
    """Hashes other than SCRAM keys and PLAIN, keys of another mechanism, and unknown users: SCRAM fails."""
    checker = makeChecker(runner, alice="SCRAM-SHA-256", carol="ARGON2ID")
    _, _, _, result = scramLogin(checker, runner, user, PASSWORD, "SCRAM-SHA-1")
    assert result.check(UnauthorizedLogin)


def test_scramSaltsDoNotTellWhoExists(runner):
    """Unknown users and users without keys get a stable salt per user, with the default iterations."""
    checker = makeChecker(runner, bob="PLAIN", carol="ARGON2ID")
    seen = {}
    for user in ("bob", "carol", "nobody", "bob", "carol", "nobody"):
        _, _, serverFirst, _ = scramLogin(checker, runner, user, "x")
        fields = dict(part.split("=", 1) for part in serverFirst.split(","))
        assert fields["i"] == "4096"
        assert seen.setdefault(user, fields["s"]) == fields["s"]
        assert len(base64.b64decode(fields["s"])) == 16
    assert len(set(seen.values())) == 3


def test_scramSaltChangedSinceTheLookup(runner):
    """If the stored keys change between the server's first message and the check, the login fails."""
    source = DictSource({"alice": stored("SCRAM-SHA-256")})
    checker = StoredSecretChecker(source, runner)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    exchange = sasl.mechanism("SCRAM-SHA-256").exchange(CHALLENGE, checker.scramParameters)
    client.set_server_first(outcome(exchange.step(client.get_client_first().encode())).data.decode())
    source.secrets["alice"] = schemes.hashPassword(PASSWORD, "SCRAM-SHA-256")
    credentials = exchange.step(client.get_client_final().encode())
    assert outcome(checker.requestAvatarId(credentials), runner).check(UnauthorizedLogin)


def test_scramLookupFailureEndsTheExchange(runner):
    """A failed lookup fails the step, and the exchange is over."""
    checker = StoredSecretChecker(DictSource({}, unavailable=True), runner)
    exchange = sasl.mechanism("SCRAM-SHA-256").exchange(CHALLENGE, checker.scramParameters)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "x")
    assert outcome(exchange.step(client.get_client_first().encode())).check(CredentialsUnavailable)
    with pytest.raises(sasl.SASLError):
        exchange.step(b"c=biws,r=x,p=eA==")


# Through the protocol


class ProtocolRunner:
    """
    A runner for protocol tests: runs the work at once, in this thread.
    """

    def __call__(self, function, *args):
        return defer.maybeDeferred(function, *args)


def protocolSession(source, **kwargs) -> Session:
    checker = StoredSecretChecker(source, ProtocolRunner())
    return Session(Portal(MemoryRealm(), [checker]), **kwargs)


def test_protocolUnavailableSourceAnswersSysTemp():
    """USER/PASS, APOP and AUTH PLAIN with an unavailable source: -ERR [SYS/TEMP], one log line, no traceback."""
    session = protocolSession(DictSource({}, unavailable=True))
    with capturedLogs() as events:
        assert session.send("USER alice").startswith(b"+OK")
        assert session.send("PASS secret") == b"-ERR [SYS/TEMP] authentication is unavailable, try again later\r\n"
        digest = hashlib.md5(session.protocol.challenge + b"secret").hexdigest()
        assert session.send(f"APOP alice {digest}").startswith(b"-ERR [SYS/TEMP]")
        initial = base64.b64encode(b"\0alice\0secret").decode()
        assert session.send(f"AUTH PLAIN {initial}").startswith(b"-ERR [SYS/TEMP]")
    unavailable = [e for e in events if e.get("event") == "auth-unavailable"]
    assert len(unavailable) == 3
    assert all("log_failure" not in e for e in events)
    assert "db.example:5432 does not answer" in unavailable[0]["why"]
    assert not session.closed
    assert session.protocol.session.failures == 0


def test_protocolUnavailableDuringScramLookup():
    """A SCRAM exchange whose salt lookup fails is answered -ERR [SYS/TEMP] right after the client's first message."""
    session = protocolSession(DictSource({}, unavailable=True))
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "x")
    with capturedLogs() as events:
        first = base64.b64encode(client.get_client_first().encode()).decode()
        assert session.send(f"AUTH SCRAM-SHA-256 {first}").startswith(b"-ERR [SYS/TEMP]")
    assert [e["event"] for e in events if e.get("event") == "auth-unavailable"] == ["auth-unavailable"]
    assert session.send("CAPA").startswith(b"+OK")


def test_protocolEveryWayOfLoggingIn():
    """Through the protocol: USER/PASS with a hash, APOP and CRAM-MD5 against PLAIN, SCRAM against stored keys."""
    source = DictSource({"alice": stored("SHA512-CRYPT"), "bob": stored("PLAIN"), "carol": stored("SCRAM-SHA-256")})
    assert protocolSession(source).login("alice", PASSWORD).startswith(b"+OK alice has 0 messages")
    session = protocolSession(source)
    digest = hashlib.md5(session.protocol.challenge + PASSWORD.encode()).hexdigest()
    assert session.send(f"APOP bob {digest}").startswith(b"+OK bob")
    session = protocolSession(source)
    digest = hashlib.md5(session.protocol.challenge + PASSWORD.encode()).hexdigest()
    assert session.send(f"APOP alice {digest}").startswith(b"-ERR [AUTH]")

    session = protocolSession(source)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "carol", PASSWORD)
    reply = session.send("AUTH SCRAM-SHA-256 " + base64.b64encode(client.get_client_first().encode()).decode())
    assert reply.startswith(b"+ ")
    client.set_server_first(base64.b64decode(reply[2:]).decode())
    reply = session.send(base64.b64encode(client.get_client_final().encode()))
    client.set_server_final(base64.b64decode(reply[2:]).decode())
    assert session.send("").startswith(b"+OK carol has 0 messages")


def test_scramSha1AgainstStoredKeys(runner):
    """Stored SCRAM-SHA-1 keys serve SCRAM-SHA-1 exchanges, and not SCRAM-SHA-256 ones."""
    checker = StoredSecretChecker(DictSource({"alice": schemes.hashPassword(PASSWORD, "SCRAM-SHA-1")}), runner)
    client, exchange, _, result = scramLogin(checker, runner, "alice", PASSWORD, "SCRAM-SHA-1")
    assert result == b"alice"
    client.set_server_final(exchange.successData().decode())
    _, _, _, result = scramLogin(checker, runner, "alice", PASSWORD, "SCRAM-SHA-256")
    assert result.check(UnauthorizedLogin)


def test_cheapChecksWaitTheirTurn(runner):
    """
    While slow hashes fill every slot, a {PLAIN} user's check waits in the
    same queue (it runs inline once its turn comes): its reply time does
    not tell how the secret is stored.
    """
    checker = StoredSecretChecker(DictSource({"alice": stored("SHA512-CRYPT"), "bob": stored("PLAIN")}), runner,
                                  concurrency=1)
    slow = checker.requestAvatarId(UsernamePassword(b"alice", PASSWORD.encode()))
    cheap = checker.requestAvatarId(UsernamePassword(b"bob", PASSWORD.encode()))
    assert not cheap.called and checker.waiting == 1
    assert outcome(slow, runner) == b"alice"
    assert outcome(cheap) == b"bob"
    assert checker.busy == 0 and checker.waiting == 0
