"""
Tests of the command line (Options), makeService and the listening service,
with an in-memory reactor.
"""

from __future__ import annotations

import os

import pytest
from twisted.application.service import IService
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from zope.interface.verify import verifyObject

from popsrv.app.listening import ListeningService
from popsrv.app.options import DEFAULT_LISTEN, Options
from popsrv.app.service import makeService
from popsrv.interfaces import IMaildrop
from popsrv.store.maildir import MaildirMaildrop
from popsrv.store.memory import MemoryMaildrop, MemoryRealm
from popsrv.store.realm import MaildirRealm


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults():
    """
    With users given, everything else has its documented default.
    """
    options = parse("--auth", "memory:alice:secret")
    assert options["listen"] == [DEFAULT_LISTEN] == ["tcp:1110:interface=127.0.0.1"]
    assert options["maildir-root"] == "mail"
    assert options["timeout"] == 600
    assert options["hostname"] is None
    assert not options["demo"]


def test_refusesToStartWithoutUsers():
    """
    No --auth and no --demo is a usage error that says how to give users.
    """
    with pytest.raises(usage.UsageError, match="--auth.*--demo"):
        parse()


def test_listenIsRepeatableAndValidated():
    """
    --listen may be given many times; a bad description is a usage error.
    """
    options = parse("--auth", "memory:a:b", "--listen", "tcp:110", "--listen", r"tcp:1110:interface=\:\:1")
    assert options["listen"] == ["tcp:110", r"tcp:1110:interface=\:\:1"]
    for bad in ("nonsense:1", "tcp:99999", "ssl:995:privateKey=/nonexistent.pem", "systemd:domain=INET:index=7"):
        with pytest.raises(usage.UsageError, match="--listen"):
            parse("--auth", "memory:a:b", "--listen", bad)


def test_timeoutMustBePositive():
    """
    --timeout 0 is refused.
    """
    with pytest.raises(usage.UsageError, match="--timeout"):
        parse("--auth", "memory:a:b", "--timeout", "0")


def test_memoryCheckerComparesBytes():
    """
    strcred's memory: checker is made to compare names as bytes, as popsrv's
    credentials carry them.
    """
    options = parse("--auth", "memory:alice:secret")
    (checker,) = options["credCheckers"]
    assert checker.users == {b"alice": b"secret"}


def test_makeServiceListens(tmp_path):
    """
    makeService listens on every endpoint with the configured protocol.
    """
    reactor = MemoryReactorClock()
    options = parse("--auth", "memory:alice:secret", "--maildir-root", str(tmp_path),
                    "--listen", "tcp:1110:interface=127.0.0.1", "--listen", "tcp:1995", "--timeout", "900",
                    "--hostname", "pop.example")
    service = makeService(options, reactor=reactor)
    assert verifyObject(IService, service)
    service.privilegedStartService()
    service.startService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
        (1110, "127.0.0.1"), (1995, ""),
    ]
    factory = reactor.tcpServers[0][1]
    assert factory.timeout == 900 and factory.hostname == b"pop.example"
    assert factory.loginTimeout == 60
    assert factory.limits.maxPerAddress == 10 and factory.limits.maxConnections >= 1
    assert factory.penalty is not None
    assert isinstance(factory.portal.realm, MaildirRealm)
    assert factory.portal.realm.root == str(tmp_path)
    assert factory.portal.realm.uidlFormat.text == "%08Xu%08Xv"
    # Each listener's connections are named by its address in the log (the
    # memory reactor's ports say 0.0.0.0), with everything else shared.
    other = reactor.tcpServers[1][1]
    assert [factory.listener, other.listener] == ["0.0.0.0:1110", "0.0.0.0:1995"]
    assert other.limits is factory.limits and other.loginQueue is factory.loginQueue
    service.stopService()


def test_demo(tmp_path, monkeypatch):
    """
    --demo creates ./popsrv-demo/ with a password and three messages, and
    reuses them on the next run.
    """
    monkeypatch.chdir(tmp_path)
    reactor = MemoryReactorClock()
    service = makeService(parse("--demo", "--listen", "tcp:0"), reactor=reactor)
    service.startService()
    password = (tmp_path / "popsrv-demo" / "password").read_text().strip()
    assert len(password) >= 12
    assert len(os.listdir(tmp_path / "popsrv-demo" / "mail" / "demo" / "new")) == 3
    makeService(parse("--demo"), reactor=MemoryReactorClock())
    assert (tmp_path / "popsrv-demo" / "password").read_text().strip() == password
    assert len(os.listdir(tmp_path / "popsrv-demo" / "mail" / "demo" / "new")) == 3


def test_listeningFailureIsRaised():
    """
    A port that cannot be bound stops the service from starting.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.error import CannotListenError

    class Busy(MemoryReactorClock):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            raise CannotListenError(interface, port, OSError("in use"))

    service = ListeningService(TCP4ServerEndpoint(Busy(), 110), object())
    with pytest.raises(CannotListenError):
        service.privilegedStartService()


def test_implementationsProvideTheirInterfaces(tmp_path):
    """
    Every shipped implementation passes verifyObject.
    """
    from twisted.cred.credentials import IUsernameHashedPassword

    from popsrv.auth.credentials import APOPCredentials

    assert verifyObject(IMaildrop, MaildirMaildrop(str(tmp_path / "alice"), "alice"))
    assert verifyObject(IMaildrop, MemoryMaildrop("alice"))
    assert verifyObject(IRealm, MaildirRealm(str(tmp_path)))
    assert verifyObject(IRealm, MemoryRealm())
    assert verifyObject(IUsernameHashedPassword, APOPCredentials(b"<a@b>", b"alice", b"0" * 32))
    assert verifyObject(ICredentialsChecker, parse("--auth", "memory:a:b")["credCheckers"][0])


def test_extensionOptions(tmp_path):
    """
    --tls-cert/--tls-key load a usable certificate; --plaintext-auth,
    --expire and --login-delay reach the factory.
    """
    from tests.support.certificates import makePKI

    pki = makePKI(tmp_path / "pki")
    options = parse("--auth", "memory:a:b", "--tls-cert", str(pki.chain), "--tls-key", str(pki.key),
                    "--plaintext-auth", "never", "--expire", "30", "--login-delay", "900")
    reactor = MemoryReactorClock()
    service = makeService(options, reactor=reactor)
    service.startService()
    factory = reactor.tcpServers[0][1]
    assert factory.tls is options["tls"] and factory.tls.options is not None
    assert factory.policy.plaintext == "never" and factory.policy.loginDelay == 900
    assert factory.expire == 30
    service.stopService()
    assert parse("--auth", "memory:a:b")["expire"] is None


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "x.pem"], "go together"),
    (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], "cannot read"),
    (["--plaintext-auth", "sometimes"], "tls-only, always, never"),
    (["--expire", "-1"], "--expire"),
    (["--expire", "soon"], "--expire"),
    (["--login-delay", "x"], "--login-delay"),
    (["--max-connections", "0"], "--max-connections must be at least 1"),
    (["--max-connections", "-5"], "--max-connections takes a whole number"),
    (["--max-connections", "1e9"], "--max-connections takes a whole number"),
    (["--max-connections-per-ip", "-1"], "--max-connections-per-ip takes a whole number"),
    (["--max-connections-per-ip", "ten"], "--max-connections-per-ip takes a whole number"),
    (["--login-timeout", "0"], "--login-timeout must be a positive number"),
    (["--login-timeout", "-60"], "--login-timeout must be a positive number"),
    (["--login-timeout", "soon"], "login-timeout"),
])
def test_badExtensionOptions(args, message):
    """
    Unusable TLS files and bad values are usage errors saying why.
    """
    with pytest.raises(usage.UsageError, match=message):
        parse("--auth", "memory:a:b", *args)


def test_limitOptionsReachTheFactory(tmp_path):
    """
    --max-connections, --max-connections-per-ip (0: none) and
    --login-timeout configure the factory; the login timeout never exceeds
    the session's.
    """
    reactor = MemoryReactorClock()
    options = parse("--auth", "memory:a:b", "--maildir-root", str(tmp_path), "--max-connections", "7",
                    "--max-connections-per-ip", "0", "--login-timeout", "5000")
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    factory = reactor.tcpServers[0][1]
    assert factory.limits.maxConnections == 7 and factory.limits.maxPerAddress is None
    assert factory.loginTimeout == factory.timeout == 600
    service.stopService()


def test_mismatchedKeyRefused(tmp_path):
    """
    A key that does not belong to the certificate is refused at startup.
    """
    from tests.support.certificates import makePKI

    one, other = makePKI(tmp_path / "one"), makePKI(tmp_path / "other")
    with pytest.raises(usage.UsageError, match="cannot use"):
        parse("--auth", "memory:a:b", "--tls-cert", str(one.chain), "--tls-key", str(other.key))


def test_sighupReloadsCertificate(tmp_path):
    """
    SIGHUP makes the service reload the certificate files; unusable new
    files keep the previous certificate.
    """
    import signal

    from twisted.logger import capturedLogs

    from popsrv.app.service import ReloadOnHangup
    from popsrv.tls import TLSSettings
    from tests.support.certificates import makePKI

    pki = makePKI(tmp_path / "pki")
    tls = TLSSettings(str(pki.chain), str(pki.key))
    first = tls.options

    class Reactor(MemoryReactorClock):
        def callFromThread(self, f, *args):
            f(*args)

    service = ReloadOnHangup(tls, Reactor())
    service.startService()
    try:
        signal.raise_signal(signal.SIGHUP)
        second = tls.options
        assert second is not first
        pki.key.write_bytes(b"garbage")
        with capturedLogs() as events:
            signal.raise_signal(signal.SIGHUP)
        assert tls.options is second
        assert any("keeping the previous TLS certificate" in e.get("log_format", "") for e in events)
    finally:
        service.stopService()
    assert signal.getsignal(signal.SIGHUP) is not service._hangup


def test_makeServiceShortensTheGILSwitchInterval(tmp_path, monkeypatch):
    """
    The service hands the GIL back to the reactor thread quickly while
    Maildir work runs in the thread pool.
    """
    import sys

    from popsrv.app.service import SWITCH_INTERVAL

    monkeypatch.setattr(sys, "setswitchinterval", lambda interval: calls.append(interval))
    calls = []
    makeService(parse("--auth", "memory:alice:secret", "--maildir-root", str(tmp_path)), reactor=MemoryReactorClock())
    assert calls == [SWITCH_INTERVAL] and SWITCH_INTERVAL <= 0.001


def test_versionIsPopsrvs(tmp_path):
    """
    twistd popsrv --version prints popsrv's version, not Twisted's.
    """
    import popsrv
    from tests.support.servers import runTwistd

    result = runTwistd(["popsrv", "--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"popsrv {popsrv.__version__}".encode()


@pytest.mark.parametrize("first, second", [
    ("file:{passwd}", "passwd-file:{passwd}"),
    ("passwd-file:{passwd}", "unix"),
    ("file:{passwd}", "file:{passwd}"),
])
def test_twoCheckersOfOneKindAreRefused(tmp_path, first, second):
    """
    Two --auth checkers that both check user names with passwords are a
    usage error naming both and the kind of login, rather than the last
    one silently checking them.
    """
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:{PLAIN}secret\n")
    first, second = first.format(passwd=passwd), second.format(passwd=passwd)
    with pytest.raises(usage.UsageError) as raised:
        parse("--auth", first, "--auth", second)
    assert str(raised.value) == (
        f"--auth {first} and --auth {second} both check user names with passwords "
        "(USER/PASS, PLAIN, LOGIN); give one"
    )


def test_checkersOfOnlyHashedLoginsConflictToo(monkeypatch):
    """
    Two checkers that share only APOP (and CRAM-MD5, SCRAM) are refused
    too, naming that kind; a checker of USER/PASS alone beside one of APOP
    alone is not ambiguous and is kept.
    """
    from twisted.cred import strcred
    from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
    from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword

    class HashedOnly(InMemoryUsernamePasswordDatabaseDontUse):
        credentialInterfaces = (IUsernameHashedPassword,)

    class PlainOnly(InMemoryUsernamePasswordDatabaseDontUse):
        credentialInterfaces = (IUsernamePassword,)

    kinds = {"hashed": HashedOnly, "plain": PlainOnly}
    monkeypatch.setattr(strcred, "makeChecker", lambda description: kinds[description.partition(":")[0]]())
    with pytest.raises(usage.UsageError, match=r"^--auth hashed:\.\.\. and --auth hashed:\.\.\. both check "
                                               r"APOP, CRAM-MD5 and SCRAM logins; give one$"):
        parse("--auth", "hashed:a", "--auth", "hashed:b")
    options = parse("--auth", "plain:a", "--auth", "hashed:b")
    assert [type(c) for c in options["credCheckers"]] == [PlainOnly, HashedOnly]


def test_aCheckerOfNoKindOfLoginIsAUsageError():
    """
    A checker that checks no credentials popsrv takes (anonymous) is a
    usage error in Twisted's words, not a traceback.
    """
    with pytest.raises(usage.UsageError, match=r"^Auth plugin not supported: "):
        parse("--auth", "anonymous")


def test_refusedCheckersKeepTheirPasswordsOutOfTheMessage():
    """
    The usage error names a memory: checker without the passwords written
    in its argument.
    """
    with pytest.raises(usage.UsageError) as raised:
        parse("--auth", "memory:alice:hunter2", "--auth", "memory:bob:letmein")
    message = str(raised.value)
    assert message.startswith("--auth memory:... and --auth memory:... both check")
    assert "hunter2" not in message and "letmein" not in message


@pytest.mark.parametrize("args, message", [
    (["--auth", "memory:a:b"], "--demo serves its own demo user: give --demo or --auth, not both"),
    (["--maildir-root", "mail"],
     "--demo serves its own Maildir in ./popsrv-demo/: give --demo or --maildir-root, not both"),
    (["--maildir", "/srv/%u"],
     "--demo serves its own Maildir in ./popsrv-demo/: give --demo or --maildir, not both"),
])
def test_demoRefusesUsersAndMaildirsOfItsOwn(args, message):
    """
    --demo with --auth, --maildir-root or --maildir is a usage error (the
    demo would silently replace them).
    """
    with pytest.raises(usage.UsageError) as raised:
        parse("--demo", *args)
    assert str(raised.value) == message


AMBIGUOUS = "--auth file:{0} and --auth passwd-file:{0} both check user names with passwords (USER/PASS, PLAIN, LOGIN)"


def test_twistdRefusesAmbiguousCheckers(tmp_path):
    """
    Under twistd, two checkers of one kind stop the start with a non-zero
    status and the one-line reason (which twistd prints after the usage,
    on standard output); nothing listens.
    """
    from tests.support.servers import runTwistd

    passwd = tmp_path / "passwd"
    passwd.write_text("alice:{PLAIN}secret\n")
    result = runTwistd(["-n", "--pidfile=", "--logfile=-", "popsrv", "--listen", "tcp:0:interface=127.0.0.1",
                        "--auth", f"file:{passwd}", "--auth", f"passwd-file:{passwd}"], tmp_path)
    text = result.stdout.decode()
    assert result.returncode != 0
    assert text.splitlines()[-1].endswith(": " + AMBIGUOUS.format(passwd) + "; give one"), text
    assert "popsrv listening" not in text and "Traceback" not in text


@pytest.mark.parametrize("args, message", [
    (["--auth", "file:{passwd}", "--auth", "passwd-file:{passwd}"], AMBIGUOUS + "; give one"),
    (["--demo", "--auth", "file:{passwd}"], "--demo serves its own demo user: give --demo or --auth, not both"),
])
def test_twistRefusesAmbiguousCheckersOnStandardError(tmp_path, args, message):
    """
    Under twist, the reason is the first line of standard error, and the
    status is non-zero.
    """
    from tests.support.servers import runTwist

    passwd = tmp_path / "passwd"
    passwd.write_text("alice:{PLAIN}secret\n")
    args = [arg.format(passwd=passwd) for arg in args]
    result = runTwist(["popsrv", "--listen", "tcp:0:interface=127.0.0.1", *args], tmp_path)
    assert result.returncode != 0
    assert result.stderr.decode().splitlines()[0] == "Error: " + message.format(passwd), result.stderr
    assert os.listdir(tmp_path) == ["passwd"]


@pytest.mark.parametrize("workers", [1, 2])
def test_sighupNeverStopsTheServer(launcher, workers):
    """
    A server without TLS settings takes SIGHUP (systemctl reload) and goes
    on serving, in one process and with workers.
    """
    import poplib
    import signal

    server = launcher.popsrv("--workers", str(workers))
    for index in range(workers if workers > 1 else 0):
        server.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    for _ in range(2):
        mark = server.twistd.mark()
        server.twistd.process.send_signal(signal.SIGHUP)
        if workers == 1:
            server.twistd.waitFor("SIGHUP: reloading", since=mark)
        client = poplib.POP3("127.0.0.1", server.port, timeout=30)
        client.user("alice")
        assert client.pass_("secret").startswith(b"+OK")
        client.quit()
    assert server.twistd.process.poll() is None


def test_uidlFormatParsedOnceAndGivenToTheRealm(tmp_path):
    """
    --uidl-format is parsed at startup, and the realm makes every maildrop
    with it; one popsrv cannot serve is refused with one line.
    """
    reactor = MemoryReactorClock()
    options = parse("--auth", "memory:alice:secret", "--maildir-root", str(tmp_path), "--uidl-format", "UID%u-%v")
    service = makeService(options, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    realm = reactor.tcpServers[0][1].portal.realm
    service.stopService()
    assert realm.maildropFor("alice").uidlFormat is options["uidl-format"]
    assert options["uidl-format"].text == "UID%u-%v"
    for bad, why in [("%m", "Dovecot computes it for mbox only"), ("%u %v", "' ' cannot be in a UIDL"),
                     ("%Zu", "%Z is not a UIDL variable")]:
        with pytest.raises(usage.UsageError) as refused:
            parse("--auth", "memory:alice:secret", "--uidl-format", bad)
        assert str(refused.value).startswith(f"--uidl-format {bad!r}: ") and why in str(refused.value)
