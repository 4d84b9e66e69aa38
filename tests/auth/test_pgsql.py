"""
The PostgreSQL credential source, against a real PostgreSQL server (see
L{tests.pgserver}) and the real reactor running in a thread: lookups,
placeholders, injection attempts, a database that is down, slow or
restarted, and what a POP3 client sees meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import poplib
import signal
import time
from pathlib import Path
from typing import Callable, Iterator, List

import psycopg
import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.cred.strcred import ICheckerFactory, findCheckerFactory
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.internet.testing import MemoryReactor
from twisted.logger import globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from popsrv.auth.pgsql import (
    PostgresSecretSource,
    PostgresSettings,
    SettingsError,
    checkQuery,
    probe,
    queryParameters,
    readSettings,
    sourceForReactor,
)
from popsrv.errors import CredentialsUnavailable
from popsrv.interfaces import ISecretSource
from popsrv.pop3 import POP3Factory
from popsrv.store.maildir import deliver
from popsrv.store.memory import MemoryRealm
from tests.support.pgserver import HOST, PostgresServer, freePort
from tests.support.servers import LISTEN_LOCAL, REPO_ROOT, Launcher, ReactorThread, runTwistd

QUERY = "SELECT password FROM users WHERE userid = %(user)s"
SHORT = 1.0  # the timeout of the tests that wait for one
SLACK = 1.5  # how much later than its timeout a failure may come on a busy machine
LAG = 0.3  # the longest the reactor may be kept from a timer
SOCKET_TIMEOUT = 30.0
AUTH_FAILED = b"-ERR [AUTH] invalid user name or password"
# Takes 30 seconds for the user "slow", no time for the others.
SLOW_QUERY = (
    "SELECT (SELECT password FROM users WHERE userid = %(user)s)"
    " FROM pg_sleep(CASE %(user)s WHEN 'slow' THEN 30 ELSE 0 END)"
)

USERS = {
    "alice": "{PLAIN}secret",
    "bob": (
        "{SHA512-CRYPT}$6$popsrvsalt$O43kZELLVI6uzrvVZaoKun9YmMAYhtZQKATYq6LJXFu3mZ6Bktrs6LuYac1M3RaOHdL6Z3ZWKU9lFj5hdvDew0"
    ),
    "o'brien": "{PLAIN}quote",
    "nobody-home": None,
}


@pytest.fixture(scope="module")
def database(postgres: PostgresServer) -> str:
    """
    The tests' tables in the session's PostgreSQL, and a connection string
    of the role C{popsrv}, which may only read them.
    """
    with psycopg.connect(postgres.conninfo(), autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS users, mailboxes, aliases")
        admin.execute("DROP ROLE IF EXISTS popsrv")
        admin.execute("CREATE ROLE popsrv LOGIN PASSWORD 'popsrv-password'")
        admin.execute("CREATE TABLE users (userid text PRIMARY KEY, password text)")
        admin.execute("CREATE TABLE mailboxes (localpart text, domain text, password text NOT NULL,"
                      " PRIMARY KEY (localpart, domain))")
        admin.execute("CREATE TABLE aliases (userid text NOT NULL, password text NOT NULL)")
        with admin.cursor() as cursor:
            cursor.executemany("INSERT INTO users VALUES (%s, %s)", list(USERS.items()))
            cursor.executemany(
                "INSERT INTO mailboxes VALUES (%s, %s, %s)",
                [("alice", "example.org", "{PLAIN}org"), ("alice", "example.net", "{PLAIN}net")],
            )
            cursor.executemany(
                "INSERT INTO aliases VALUES (%s, %s)", [("carol", "{PLAIN}one"), ("carol", "{PLAIN}two")]
            )
        admin.execute("GRANT SELECT ON users, mailboxes, aliases TO popsrv")
    return postgres.conninfo(user="popsrv", password="popsrv-password")


class Sources:
    """
    Makes sources in the reactor thread and stops them all at the end.
    """

    def __init__(self, running: ReactorThread, conninfo: str) -> None:
        self.running = running
        self.conninfo = conninfo
        self._made: List[PostgresSecretSource] = []

    def __call__(self, query: str = QUERY, conninfo: str = "", **settings) -> PostgresSecretSource:
        source = PostgresSecretSource(
            PostgresSettings(conninfo=conninfo or self.conninfo, query=query, **settings), self.running.reactor
        )
        self._made.append(source)
        self.running.call(source.start)
        return source

    def lookup(self, source: PostgresSecretSource, user: bytes):
        """
        Look C{user} up, from the reactor thread, and return the answer.
        """
        return self.running.call(source.secretFor, user)

    def stopAll(self) -> None:
        for source in self._made:
            self.running.call(source.stop)


@pytest.fixture
def sources(reactorThread: ReactorThread, database: str) -> Iterator[Sources]:
    """
    Make PostgreSQL sources on the test database (the role C{popsrv}).
    """
    made = Sources(reactorThread, database)
    try:
        yield made
    finally:
        made.stopAll()


class Events:
    """
    The log events of the source, while a test runs.
    """

    def __init__(self) -> None:
        self.events: List[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def kinds(self, prefix: str = "pgsql") -> List[str]:
        return [e["event"] for e in list(self.events) if str(e.get("event", "")).startswith(prefix)]


@pytest.fixture
def events() -> Iterator[Events]:
    """
    Collect the log events emitted during a test (from any thread).
    """
    collected = Events()
    globalLogPublisher.addObserver(collected)
    try:
        yield collected
    finally:
        globalLogPublisher.removeObserver(collected)


class LagMeter:
    """
    Measures how late the reactor runs a timer that fires every 20 ms: if
    anything blocked the reactor, the gap between two ticks shows it.
    """

    interval = 0.02

    def __init__(self, running: ReactorThread) -> None:
        self.running = running
        self.worst = 0.0
        self._last = 0.0
        self._loop = LoopingCall(self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        self.worst = max(self.worst, now - self._last - self.interval)
        self._last = now

    def __enter__(self) -> LagMeter:
        def start():
            self._last = time.monotonic()
            self._loop.start(self.interval, now=False)

        self.running.call(start)
        return self

    def __exit__(self, *exc_info) -> None:
        self.running.call(self._loop.stop)


def timed(call: Callable[[], object]):
    """
    Return what C{call()} returns or raises, and how long it took.
    """
    started = time.monotonic()
    try:
        outcome = call()
    except Exception as error:
        outcome = error
    return outcome, time.monotonic() - started


# The settings


def test_sourceProvidesISecretSource():
    """
    The source implements the ISecretSource contract.
    """
    source = PostgresSecretSource(PostgresSettings(conninfo="host=127.0.0.1", query=QUERY), MemoryReactor())
    assert verifyObject(ISecretSource, source)


@pytest.mark.parametrize(
    "query, names",
    [
        (QUERY, {"user"}),
        ("SELECT p FROM m WHERE l = %(localpart)s AND d = %(domain)s", {"localpart", "domain"}),
        ("SELECT p FROM u WHERE n = %(user)s AND p LIKE '{%%'", {"user"}),
        ("SELECT p FROM u WHERE n = lower(%(user)s) OR n = %(user)s", {"user"}),
    ],
)
def test_queryPlaceholders(query, names):
    """
    Queries pass the login name by named placeholders only; %% is a literal
    percent sign.
    """
    assert checkQuery(query) == names


@pytest.mark.parametrize(
    "query, complaint",
    [
        ("SELECT p FROM u WHERE n = %s", "'%s'"),
        ("SELECT p FROM u WHERE n = %(name)s", "unknown placeholder %(name)s"),
        ("SELECT p FROM u WHERE n = %(user)d", "must end in s"),
        ("SELECT p FROM u WHERE n = %(user)", "must end in s"),
        ("SELECT p FROM u WHERE p LIKE '{%' AND n = %(user)s", "literal % as %%"),
        ("SELECT p FROM m WHERE d = %(domain)s", "%(user)s or %(localpart)s"),
        ("SELECT p FROM u WHERE n = 'alice'", "%(user)s or %(localpart)s"),
    ],
)
def test_queryMistakes(query, complaint):
    """
    A query that would need the login name built into its text, or that
    does not select by user, is refused with a message saying so.
    """
    with pytest.raises(SettingsError) as raised:
        checkQuery(query)
    assert complaint in str(raised.value)


def test_queryParameters():
    """
    %(localpart)s and %(domain)s are the login name split at its last @.
    """
    assert queryParameters("alice@example.org") == {
        "user": "alice@example.org", "localpart": "alice", "domain": "example.org"}
    assert queryParameters("a@b@example.org") == {
        "user": "a@b@example.org", "localpart": "a@b", "domain": "example.org"}
    assert queryParameters("alice") == {"user": "alice", "localpart": "alice", "domain": ""}


def test_readSettings(tmp_path: Path):
    """
    The settings file is INI: [pgsql] with conninfo, query (on several
    indented lines if need be, % kept as written), timeout and pool.
    """
    path = tmp_path / "pgsql.conf"
    path.write_text(
        "# popsrv's PostgreSQL users\n"
        "[pgsql]\n"
        "conninfo = host=db.example.org port=5433 dbname=mail user=popsrv password=p%ss connect_timeout=5\n"
        "query = SELECT password FROM mailboxes\n"
        "    WHERE localpart = %(localpart)s AND domain = %(domain)s AND password LIKE '{%%'\n"
        "timeout = 2.5\n"
        "pool = 8\n",
        encoding="utf-8",
    )
    settings = readSettings(str(path))
    assert settings == PostgresSettings(
        conninfo="host=db.example.org port=5433 dbname=mail user=popsrv password=p%ss connect_timeout=5",
        query="SELECT password FROM mailboxes\n"
        "WHERE localpart = %(localpart)s AND domain = %(domain)s AND password LIKE '{%%'",
        timeout=2.5,
        pool=8,
    )
    path.write_text("[pgsql]\nconninfo = dbname=mail\nquery = " + QUERY + "\n", encoding="utf-8")
    assert (readSettings(str(path)).timeout, readSettings(str(path)).pool) == (3.0, 4)


@pytest.mark.parametrize(
    "text, complaint",
    [
        (None, "cannot read"),
        ("conninfo = x\n", "not a usable settings file"),
        ("[postgres]\nconninfo = dbname=mail\n", "has no [pgsql] section"),
        ("[pgsql]\nquery = " + QUERY + "\n", "needs conninfo"),
        ("[pgsql]\nconninfo = dbname=mail\n", "needs query"),
        ("[pgsql]\nconninfo = dbname=mail\nquery = " + QUERY + "\ntimout = 3\n", "unknown setting 'timout'"),
        ("[pgsql]\nconninfo = dbname=mail\nquery = " + QUERY + "\ntimeout = soon\n", "could not convert"),
        ("[pgsql]\nconninfo = dbname=mail\nquery = " + QUERY + "\ntimeout = 0\n", "timeout must be"),
        ("[pgsql]\nconninfo = dbname=mail\nquery = " + QUERY + "\npool = 0\n", "pool must be"),
        ("[pgsql]\nconninfo = dbname=mail\nquery = " + QUERY + "\npool = 2.5\n", "invalid literal"),
        ("[pgsql]\nconninfo = dbname='mail\nquery = " + QUERY + "\n", "not a libpq connection string"),
        ("[pgsql]\nconninfo = dbname=mail\nquery = SELECT 1 WHERE %s\n", "'%s'"),
    ],
)
def test_readSettingsMistakes(tmp_path: Path, text, complaint):
    """
    A settings file that cannot be used is refused with a message naming
    the file and the mistake.
    """
    path = tmp_path / "pgsql.conf"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as raised:
        readSettings(str(path))
    assert str(path) in str(raised.value)
    assert complaint in str(raised.value)


def test_sourceForReactorFollowsTheReactor():
    """
    sourceForReactor starts the source when the reactor runs and stops it
    before the reactor shuts down.
    """
    reactor = MemoryReactor()
    source = sourceForReactor(PostgresSettings(conninfo="dbname=mail", query=QUERY), reactor)
    assert [hook for hook, args, kwargs in reactor.whenRunningHooks] == [source.start]
    assert [hook for hook, args, kwargs in reactor.triggers["before"]["shutdown"]] == [source.stop]


# Lookups in a live database


def test_knownAndUnknownUsers(sources: Sources):
    """
    The query's one column is the answer; no row (or a NULL) is an unknown
    user.
    """
    source = sources()
    assert sources.lookup(source, b"alice") == "{PLAIN}secret"
    assert sources.lookup(source, b"bob") == USERS["bob"]
    assert sources.lookup(source, b"o'brien") == "{PLAIN}quote"
    assert sources.lookup(source, b"carol") is None
    assert sources.lookup(source, b"nobody-home") is None
    assert sources.lookup(source, b"ALICE") is None


def test_namesThatNoRowCanMatch(sources: Sources):
    """
    A name that is not UTF-8 or holds NUL (PostgreSQL text cannot) is an
    unknown user, without asking the database.
    """
    source = sources()
    assert sources.lookup(source, b"alice\xff") is None
    assert sources.lookup(source, b"ali\0ce") is None


def test_localpartAndDomainPlaceholders(sources: Sources):
    """
    %(localpart)s and %(domain)s select a virtual user by the parts of the
    login name.
    """
    source = sources(
        "SELECT password FROM mailboxes WHERE localpart = lower(%(localpart)s) AND domain = lower(%(domain)s)"
    )
    assert sources.lookup(source, b"alice@example.org") == "{PLAIN}org"
    assert sources.lookup(source, b"Alice@Example.ORG") == "{PLAIN}org"
    assert sources.lookup(source, b"alice@example.net") == "{PLAIN}net"
    assert sources.lookup(source, b"alice@example.com") is None
    assert sources.lookup(source, b"alice") is None


@pytest.mark.parametrize(
    "name",
    [
        b"alice' OR '1'='1",
        b"' OR 1=1 --",
        b"x'; DROP TABLE users; --",
        b"alice\\' OR TRUE --",
        b"%(user)s",
        b"%s",
        b"$1",
        b"alice'||'",
    ],
)
def test_injectionIsHarmless(sources: Sources, database: str, name: bytes):
    """
    A login name is only ever a query parameter: SQL in it finds nobody,
    changes nothing, and real names with quotes still work.
    """
    source = sources()
    assert sources.lookup(source, name) is None
    assert sources.lookup(source, b"alice") == "{PLAIN}secret"
    with psycopg.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM users").fetchone() == (len(USERS),)


def test_severalRowsAreAConfigurationError(sources: Sources, events: Events):
    """
    A query that finds several rows for a user refuses the login for now
    (the operator must fix the query or the data), and says so in the log.
    """
    source = sources("SELECT password FROM aliases WHERE userid = %(user)s")
    with pytest.raises(CredentialsUnavailable, match="several rows"):
        sources.lookup(source, b"carol")
    assert events.kinds() == ["pgsql-start", "pgsql-unavailable"]
    assert sources.lookup(source, b"dave") is None


def test_wrongQueries(sources: Sources, events: Events):
    """
    A query that fails, or returns more than the secret, refuses the login
    for now with one log line saying why.
    """
    missing = sources("SELECT password FROM no_such_table WHERE userid = %(user)s")
    with pytest.raises(CredentialsUnavailable, match='relation "no_such_table" does not exist'):
        sources.lookup(missing, b"alice")
    columns = sources("SELECT userid, password FROM users WHERE userid = %(user)s")
    with pytest.raises(CredentialsUnavailable, match="2 columns"):
        sources.lookup(columns, b"alice")
    number = sources("SELECT length(password) FROM users WHERE userid = %(user)s")
    with pytest.raises(CredentialsUnavailable, match="returns a int"):
        sources.lookup(number, b"alice")
    assert events.kinds("pgsql-unavailable") == ["pgsql-unavailable"] * 3
    assert not any(e.get("log_failure") for e in events.events)


def test_stoppedSource(sources: Sources):
    """
    After stop, lookups fail at once; stopping twice is harmless.
    """
    source = sources()
    assert sources.lookup(source, b"alice") == "{PLAIN}secret"
    sources.running.call(source.stop)
    sources.running.call(source.stop)
    with pytest.raises(CredentialsUnavailable, match="stopped"):
        sources.lookup(source, b"alice")


def test_secretsAreNotLogged(sources: Sources, events: Events):
    """
    The start line names the server but not the password of the conninfo,
    and no event carries a secret.
    """
    source = sources()
    assert sources.lookup(source, b"alice") == "{PLAIN}secret"
    assert events.kinds() == ["pgsql-start"]
    text = repr(events.events)
    assert "popsrv-password" not in text and "{PLAIN}secret" not in text
    start = [e for e in events.events if e.get("event") == "pgsql-start"][0]
    assert f"host={HOST}" in start["where"] and "user=popsrv" in start["where"]
    assert "password" not in start["where"]


# A database that is down, slow, or restarted


def test_databaseDown(sources: Sources, events: Events):
    """
    With nothing listening on the database's port, a lookup fails with
    CredentialsUnavailable after the timeout, the reactor keeps running
    meanwhile, and the log has one line saying why.
    """
    source = sources(conninfo=f"host={HOST} port={freePort()} dbname=mail user=popsrv", timeout=SHORT)
    with LagMeter(sources.running) as lag:
        outcome, elapsed = timed(lambda: sources.lookup(source, b"alice"))
    assert isinstance(outcome, CredentialsUnavailable), outcome
    assert "Connection refused" in str(outcome)
    assert SHORT * 0.9 <= elapsed <= SHORT + SLACK
    assert lag.worst < LAG
    assert events.kinds() == ["pgsql-start", "pgsql-unavailable"]
    assert not any(e.get("log_failure") for e in events.events)


def test_slowDatabase(sources: Sources, events: Events):
    """
    A query slower than the timeout fails with CredentialsUnavailable at the
    timeout, without holding up the reactor; the server cancels it, so the
    pool's only connection serves the next lookup.
    """
    source = sources(
        SLOW_QUERY,
        timeout=SHORT,
        pool=1,
    )
    assert sources.lookup(source, b"alice") == "{PLAIN}secret"
    with LagMeter(sources.running) as lag:
        outcome, elapsed = timed(lambda: sources.lookup(source, b"slow"))
    assert isinstance(outcome, CredentialsUnavailable), outcome
    assert SHORT * 0.9 <= elapsed <= SHORT + SLACK
    assert lag.worst < LAG
    answer, elapsed = timed(lambda: sources.lookup(source, b"alice"))
    assert answer == "{PLAIN}secret"
    assert elapsed < SHORT + SLACK
    assert events.kinds() == ["pgsql-start", "pgsql-unavailable", "pgsql-recovered"]


def test_recoveryAfterRestart(sources: Sources, postgres: PostgresServer, events: Events):
    """
    When the database stops, lookups fail with CredentialsUnavailable; when
    it is back, lookups work again without restarting anything.
    """
    source = sources(timeout=SHORT, pool=2)
    assert sources.lookup(source, b"alice") == "{PLAIN}secret"
    postgres.stop()
    try:
        outcome, elapsed = timed(lambda: sources.lookup(source, b"alice"))
        assert isinstance(outcome, CredentialsUnavailable), outcome
        assert elapsed <= SHORT + SLACK
    finally:
        postgres.start()
    deadline = time.monotonic() + 20
    while True:
        outcome, elapsed = timed(lambda: sources.lookup(source, b"alice"))
        if outcome == "{PLAIN}secret" or time.monotonic() > deadline:
            break
    assert outcome == "{PLAIN}secret"
    assert events.kinds()[-1] == "pgsql-recovered"


# What a POP3 client sees


@implementer(ICredentialsChecker)
class PlainSecretChecker:
    """
    The least checker over a secret source: USER/PASS against {PLAIN}
    secrets.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, source) -> None:
        self.source = source

    async def _check(self, credentials) -> bytes:
        secret = await defer.maybeDeferred(self.source.secretFor, credentials.username)
        if secret is None or not secret.startswith("{PLAIN}"):
            raise UnauthorizedLogin()
        if not credentials.checkPassword(secret[len("{PLAIN}"):].encode("utf-8")):
            raise UnauthorizedLogin()
        return credentials.username

    def requestAvatarId(self, credentials) -> defer.Deferred:
        return defer.ensureDeferred(self._check(credentials))


class Listening:
    """
    A POP3 server on 127.0.0.1 in the reactor thread, over one source.
    """

    def __init__(self, running: ReactorThread, source) -> None:
        self.running = running
        realm = MemoryRealm()
        realm.maildrop("alice").add(b"Subject: hi\r\n\r\nfrom PostgreSQL\r\n")
        factory = POP3Factory(
            Portal(realm, [PlainSecretChecker(source)]), hostname="pop.example", clock=running.reactor,
            authFailureDelay=0,
        )
        endpoint = TCP4ServerEndpoint(running.reactor, 0, interface=HOST)
        self.port = running.call(endpoint.listen, factory)

    def client(self) -> poplib.POP3:
        return poplib.POP3(HOST, self.port.getHost().port, timeout=SOCKET_TIMEOUT)

    def close(self) -> None:
        self.running.call(self.port.stopListening)


@pytest.fixture
def listen(reactorThread: ReactorThread) -> Iterator[Callable[[object], Listening]]:
    """
    Start POP3 servers in the reactor thread; they stop at the end.
    """
    started: List[Listening] = []

    def start(source) -> Listening:
        started.append(Listening(reactorThread, source))
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.close()


def test_pop3ClientsSeeTemporaryFailures(sources: Sources, listen, events: Events):
    """
    Over POP3, a database that is down gives -ERR [SYS/TEMP], never the
    wrong-password answer; with the database up, the right password logs
    in and a wrong one gets [AUTH]. The server logs one line (no
    traceback) for the failed lookup.
    """
    up = listen(sources())
    down = listen(sources(conninfo=f"host={HOST} port={freePort()} dbname=mail user=popsrv", timeout=SHORT))

    client = up.client()
    client.user("alice")
    assert client.pass_("secret").startswith(b"+OK alice has 1 message")
    client.quit()
    client = up.client()
    client.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.pass_("wrong")
    client.close()

    client = down.client()
    client.user("alice")
    with pytest.raises(poplib.error_proto) as raised:
        client.pass_("secret")
    assert raised.value.args[0] == b"-ERR [SYS/TEMP] authentication is unavailable, try again later"
    client.quit()
    assert events.kinds("pgsql-unavailable") == ["pgsql-unavailable"]
    assert not any(e.get("log_failure") for e in events.events)


def test_otherSessionsGoOnWhileTheDatabaseIsSlow(sources: Sources, listen):
    """
    While one login waits for a slow database, another client is greeted
    and served at once.
    """
    server = listen(
        sources(
            SLOW_QUERY,
            timeout=SHORT * 2,
        )
    )
    waiting = server.client()
    waiting.user("slow")
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        slowLogin = executor.submit(timed, lambda: waiting.pass_("x"))
        other, elapsed = timed(lambda: server.client())
        assert isinstance(other, poplib.POP3), other
        assert other.getwelcome().startswith(b"+OK")
        assert other.capa()
        other.quit()
        assert elapsed < LAG * 2
        assert not slowLogin.done()
        outcome, slowElapsed = slowLogin.result(SOCKET_TIMEOUT)
    waiting.close()
    assert isinstance(outcome, poplib.error_proto) and b"[SYS/TEMP]" in outcome.args[0], outcome
    assert slowElapsed >= SHORT * 2 * 0.9


# The strcred plugin


def test_pluginIsACheckerFactory():
    """
    --auth pgsql:FILE is a strcred checker plugin.
    """
    factory = findCheckerFactory("pgsql")
    assert verifyObject(ICheckerFactory, factory)
    assert IUsernamePassword in factory.credentialInterfaces
    assert "conninfo" in factory.authHelp and "query" in factory.authHelp


def test_pluginRefusesUnusableSettings(tmp_path: Path):
    """
    --auth pgsql: with a missing or wrong file fails with a message naming
    the file and the mistake.
    """
    factory = findCheckerFactory("pgsql")
    with pytest.raises(ValueError, match="needs the path"):
        factory.generateChecker("")
    with pytest.raises(SettingsError, match="cannot read"):
        factory.generateChecker(str(tmp_path / "missing.conf"))
    path = tmp_path / "pgsql.conf"
    path.write_text("[pgsql]\nconninfo = dbname=mail\nquery = SELECT p FROM u WHERE n = '%s'\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="literal % as %%"):
        factory.generateChecker(str(path))


def test_pluginBuildsTheStoredSecretChecker(tmp_path: Path):
    """
    With usable settings, the plugin builds the stored-secret checker over
    a PostgreSQL source.
    """
    checkers = pytest.importorskip("popsrv.auth.checkers")
    path = tmp_path / "pgsql.conf"
    path.write_text("[pgsql]\nconninfo = dbname=mail\nquery = " + QUERY + "\n", encoding="utf-8")
    factory = type(findCheckerFactory("pgsql"))(reactor=MemoryReactor())
    checker = factory.generateChecker(str(path))
    assert isinstance(checker, checkers.StoredSecretChecker)
    assert verifyObject(ICredentialsChecker, checker)


def test_twistdListsThePlugin(tmp_path: Path):
    """
    twistd popsrv --help-auth lists pgsql, and a settings file that cannot
    be read stops the start with a message naming it (no traceback).
    """
    listing = runTwistd(["popsrv", "--help-auth"], tmp_path)
    assert listing.returncode == 0, listing.stdout
    assert b"pgsql" in listing.stdout

    missing = tmp_path / "missing.conf"
    result = runTwistd(["-n", "--pidfile=", "--logfile=-", "popsrv", "--auth", f"pgsql:{missing}"], tmp_path)
    text = result.stdout.decode("utf-8", "replace")
    assert result.returncode != 0, text
    assert text.splitlines()[-1].endswith(f": --auth pgsql:{missing}: no such file"), text
    assert "Traceback" not in text, text


# twistd with --auth pgsql:FILE (needs the stored-secret checker)


def writeSettings(path: Path, conninfo: str, timeout: float = 3.0, query: str = QUERY) -> Path:
    """
    Write a settings file for --auth pgsql:PATH.
    """
    path.write_text(
        f"[pgsql]\nconninfo = {conninfo}\nquery = {query}\ntimeout = {timeout:g}\npool = 2\n", encoding="utf-8"
    )
    return path


def startTwistd(launcher: Launcher, workdir: Path, settings: Path):
    """
    Start twistd -n popsrv with --auth pgsql:SETTINGS; return it and its
    port.
    """
    root = workdir / "mail"
    deliver(str(root / "alice"), b"Subject: hello\r\n\r\nfrom PostgreSQL\r\n")
    process = launcher.twistd(
        ["--listen", LISTEN_LOCAL, "--maildir-root", str(root), "--auth", f"pgsql:{settings}"], workdir
    )
    return process, process.waitListening()


def popLogin(port: int, user: str, password: str) -> bytes:
    """
    Log in with poplib's USER/PASS and QUIT; return the reply to PASS (an
    -ERR reply is returned, not raised).
    """
    client = poplib.POP3(HOST, port, timeout=SOCKET_TIMEOUT)
    try:
        client.user(user)
        try:
            reply = client.pass_(password)
        except poplib.error_proto as error:
            return error.args[0]
        client.quit()
        return reply
    finally:
        client.close()


def test_twistdServesPostgresUsers(launcher: Launcher, tmp_path: Path, database: str):
    """
    twistd -n popsrv --auth pgsql:FILE logs users in with the secrets the
    query finds ({PLAIN} and {SHA512-CRYPT}), refuses wrong passwords and
    unknown users alike, and stops cleanly.
    """
    pytest.importorskip("popsrv.auth.checkers")
    settings = writeSettings(tmp_path / "pgsql.conf", database)
    process, port = startTwistd(launcher, tmp_path, settings)
    assert popLogin(port, "alice", "secret").startswith(b"+OK alice has 1 message")
    assert popLogin(port, "bob", "hunter2").startswith(b"+OK bob has 0 messages")
    assert popLogin(port, "o'brien", "quote").startswith(b"+OK")
    for user, password in [("alice", "wrong"), ("bob", "secret"), ("nobody-home", "x"), ("alice'OR'1'='1", "x")]:
        assert popLogin(port, user, password) == AUTH_FAILED, user
    assert "popsrv-password" not in process.output
    process.stop()
    assert "Server Shut Down." in process.output, process.output


def test_twistdWithTheDatabaseDown(launcher: Launcher, tmp_path: Path):
    """
    With the database unreachable, a login gets -ERR [SYS/TEMP] after the
    timeout, and the log says why in a line, without a traceback.
    """
    pytest.importorskip("popsrv.auth.checkers")
    settings = writeSettings(tmp_path / "pgsql.conf", f"host={HOST} port={freePort()} dbname=mail", timeout=SHORT)
    process, port = startTwistd(launcher, tmp_path, settings)
    mark = process.mark()
    reply, elapsed = timed(lambda: popLogin(port, "alice", "secret"))
    assert reply == b"-ERR [SYS/TEMP] authentication is unavailable, try again later"
    assert elapsed <= SHORT + SLACK + 1
    process.waitFor(r"PostgreSQL credential lookup for 'alice' failed: .*Connection refused", since=mark)
    assert "Traceback" not in process.output, process.output
    process.stop()
    assert "Server Shut Down." in process.output, process.output


def test_stopDoesNotWaitForeverForAStuckPool() -> None:
    """
    Stopping the source closes the pool from a thread of its own and waits
    at most the timeout and a second: connections stuck on a host that does
    not answer cannot hold the shutdown (nor block the reactor joining
    their threads).
    """
    import threading as threadingModule

    from twisted.internet.task import Clock
    from twisted.logger import capturedLogs

    from popsrv.auth.pgsql import PostgresSecretSource, PostgresSettings

    class Reactor(Clock):
        def callFromThread(self, function, *args):
            function(*args)

    release = threadingModule.Event()

    class StuckPool:
        def close(self, timeout):
            release.wait(30)

    class Threads:
        stopped = False

        def stop(self):
            self.stopped = True

    reactor = Reactor()
    settings = PostgresSettings(
        conninfo="host=127.0.0.1", query="SELECT secret FROM users WHERE name = %(user)s", timeout=2
    )
    source = PostgresSecretSource(settings, reactor)
    threads = Threads()
    source._pool, source._threads = StuckPool(), threads
    stopped = []
    with capturedLogs() as events:
        source.stop().addCallback(stopped.append)
        reactor.advance(settings.timeout + 1)
    release.set()
    assert stopped == [None]
    assert not threads.stopped
    assert [e["event"] for e in events if e.get("event") == "pgsql-stop-timeout"] == ["pgsql-stop-timeout"]


def test_withoutPsycopgTheCheckerSaysWhatToInstall(tmp_path):
    """
    Without psycopg (the pgsql extra), popsrv still imports, and --auth
    pgsql:FILE stops with one line naming the extra to install.
    """
    import subprocess
    import sys

    settings = tmp_path / "pgsql.conf"
    settings.write_text("[pgsql]\nconninfo = host=127.0.0.1\nquery = SELECT 1\n")
    script = (
        "import sys\n"
        "sys.modules['psycopg'] = None\n"
        "sys.modules['psycopg_pool'] = None\n"
        "import popsrv\n"
        "from twisted.cred import strcred\n"
        "try:\n"
        f"    strcred.makeChecker('pgsql:{settings}')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=str(REPO_ROOT))
    assert result.stdout.strip() == "pgsql needs psycopg: pip install 'popsrv[pgsql]'", result.stderr


# probe: one connection and one query, for python -m popsrv check


def test_probeAnswersForAWorkingDatabase(database: str) -> None:
    """
    The probe connects and runs the query for a made-up user: no row is an
    answer, as is a query that finds one row.
    """
    probe(PostgresSettings(conninfo=database, query=QUERY))
    probe(PostgresSettings(conninfo=database, query=QUERY), user="alice")


@pytest.mark.parametrize("query, reason", [
    ("SELECT userid, password FROM users WHERE userid = %(user)s OR true", "the query returns 2 columns"),
    ("SELECT password FROM users WHERE userid <> %(user)s", "the query found several rows"),
    ("SELECT password FROM nosuchtable WHERE userid = %(user)s", 'the query failed: relation "nosuchtable"'),
    ("SELECT (SELECT password FROM users WHERE userid = %(user)s) FROM pg_sleep(5)", "the query took longer than 1 s"),
])
def test_probeReportsAnUnusableQuery(database: str, query: str, reason: str) -> None:
    """
    A query that the backend could not use fails the probe with the same
    one-line reason a login's lookup would log.
    """
    with pytest.raises(CredentialsUnavailable) as raised:
        probe(PostgresSettings(conninfo=database, query=query, timeout=SHORT))
    assert str(raised.value).startswith(reason), raised.value


def test_probeReportsNoDatabaseWithoutThePassword() -> None:
    """
    Nothing listening on the port: the probe fails at once with libpq's
    first line, and never repeats the connection string's password.
    """
    conninfo = f"host={HOST} port={freePort()} dbname=mail user=popsrv password=s3cret-pw"
    with pytest.raises(CredentialsUnavailable) as raised:
        probe(PostgresSettings(conninfo=conninfo, query=QUERY))
    message = str(raised.value)
    assert message.startswith("cannot connect: ") and "Connection refused" in message, message
    assert "s3cret-pw" not in message and "\n" not in message


def test_probeReportsAWrongPasswordWithoutIt(postgres: PostgresServer, database: str) -> None:
    """
    A wrong password is named as PostgreSQL says, without the password.
    """
    conninfo = postgres.conninfo(user="popsrv", password="not-the-password")
    with pytest.raises(CredentialsUnavailable) as raised:
        probe(PostgresSettings(conninfo=conninfo, query=QUERY))
    assert "password authentication failed" in str(raised.value)
    assert "not-the-password" not in str(raised.value)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighupReloadsTheSettingsFile(
    launcher: Launcher, tmp_path: Path, postgres: PostgresServer, database: str, workers: str,
):
    """
    SIGHUP reads the pgsql: settings file again: a new query answers the
    next logins, a session logged in before goes on, and an unusable file
    keeps the settings in force (in one process and with workers).
    """
    pytest.importorskip("popsrv.auth.checkers")
    table = f"users_reloaded_{workers}"
    with psycopg.connect(postgres.conninfo(), autocommit=True) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {table}")
        admin.execute(f"CREATE TABLE {table} (userid text PRIMARY KEY, password text)")
        admin.execute(f"INSERT INTO {table} VALUES ('bob', '{{PLAIN}}changed')")
        admin.execute(f"GRANT SELECT ON {table} TO popsrv")
    settings = writeSettings(tmp_path / "pgsql.conf", database)
    root = tmp_path / "mail"
    deliver(str(root / "alice"), b"Subject: hello\r\n\r\nfrom PostgreSQL\r\n")
    process = launcher.twistd(
        ["--listen", LISTEN_LOCAL, "--maildir-root", str(root), "--auth", f"pgsql:{settings}", "--workers", workers],
        tmp_path,
    )
    port = process.waitListening()
    indexes = range(int(workers)) if workers != "1" else []
    for index in indexes:
        process.waitFor(rf"worker {index}\] worker ready", timeout=30)
    assert popLogin(port, "bob", "hunter2").startswith(b"+OK")
    open_ = poplib.POP3(HOST, port, timeout=SOCKET_TIMEOUT)
    open_.user("alice")
    assert open_.pass_("secret").startswith(b"+OK")
    writeSettings(settings, database, query=QUERY.replace("users", table))
    mark = process.mark()
    process.process.send_signal(signal.SIGHUP)
    for index in indexes or [None]:
        prefix = rf"worker {index}\].*" if index is not None else ""
        process.waitFor(rf"{prefix}reloaded the PostgreSQL settings from", since=mark)
    deadline = time.monotonic() + 30
    while (reply := popLogin(port, "bob", "changed")) != b"+OK bob has 0 messages (0 octets)":
        assert time.monotonic() < deadline, reply
    assert popLogin(port, "bob", "hunter2") == AUTH_FAILED
    assert open_.stat() == (1, 35)
    open_.quit()
    settings.write_text("[pgsql]\nconninfo = \n")
    mark = process.mark()
    process.process.send_signal(signal.SIGHUP)
    process.waitFor("keeping the PostgreSQL settings in force", since=mark)
    assert popLogin(port, "bob", "changed").startswith(b"+OK")
