"""
A PostgreSQL credential backend: an L{ISecretSource} that runs the
operator's SQL query to find each user's stored C{{SCHEME}secret}.

How it talks to PostgreSQL, and why: psycopg 3's blocking API, with
connections kept by C{psycopg_pool.ConnectionPool} and used only from a
Twisted C{ThreadPool} of its own, as many threads as the pool has
connections.

    - The reactor never waits: each lookup runs in one of those threads and
      its result comes back as a C{Deferred}.  The threads are not the
      reactor's shared pool, so a slow database never holds up Maildir
      work, nor the other way round.
    - psycopg_pool bounds the number of connections, checks a connection
      before each use (one that died when the database restarted is
      replaced instead of failing a login), reconnects in the background,
      and bounds the wait for a free connection; that wait, libpq's connect
      timeout and a server-side C{statement_timeout} all come from the one
      C{timeout} setting, and the caller's C{Deferred} fails at that
      deadline whatever the threads are doing.
    - Twisted's C{adbapi.ConnectionPool} is generic DB-API: it notices a
      dead connection only when a query on it has failed (that login is
      lost), has no connect or statement timeout of its own and no bound
      on the wait for a connection.
    - psycopg's asyncio API would need Twisted's asyncio reactor for the
      whole server: a choice for whoever runs twistd, not for a backend.

The source opens its pool when started (L{PostgresSecretSource.start}, or
the first lookup), and L{PostgresSecretSource.stop} closes the connections
and ends the threads; L{sourceForReactor} ties both to the reactor's start
and shutdown, as C{--auth pgsql:FILE} needs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Dict, List, Optional

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from popsrv.auth.pgsqlsettings import (
    DEFAULT_POOL,
    DEFAULT_TIMEOUT,
    PLACEHOLDERS,
    PostgresSettings,
    SettingsError,
    checkQuery,
    queryParameters,
    readSettings,
)
from popsrv.errors import CredentialsUnavailable
from popsrv.interfaces import IReloadable, ISecretSource

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_TIMEOUT",
    "PLACEHOLDERS",
    "PostgresSecretSource",
    "PostgresSettings",
    "ReloadingPostgresSource",
    "SettingsError",
    "checkQuery",
    "probe",
    "queryParameters",
    "readSettings",
    "reloadingSourceForReactor",
    "sourceForReactor",
]

# The login name L{probe} looks up: one that no real user has.
PROBE_USER = "popsrv-check@example.invalid"
_GRACE = 0.25

log = Logger()

def _describeConninfo(conninfo: str) -> str:
    """
    A connection string without its password, for logs.
    """
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "(unparsable conninfo)"
    shown = ("host", "hostaddr", "port", "dbname", "user")
    return " ".join(f"{key}={params[key]}" for key in shown if params.get(key)) or "(libpq defaults)"


def _quietPoolWarnings() -> None:
    """
    Keep psycopg_pool's warnings about each failed connection attempt out
    of the log, unless the application configured Python's C{logging}.

    Unconfigured (as under twistd), Python prints them on stderr, several
    lines per attempt, and twistd logs each as an error; the source already
    logs one line per failed lookup, with the reason.
    """
    poolLogger = logging.getLogger("psycopg.pool")
    if not logging.getLogger().handlers and poolLogger.level == logging.NOTSET:
        poolLogger.setLevel(logging.ERROR)


def _firstLine(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _connectArguments(settings: PostgresSettings) -> Dict[str, object]:
    """
    The keyword arguments of every connection: autocommit, and libpq's
    connect timeout from the settings' timeout (at least 2 s, libpq's
    least useful value) unless the connection string sets its own.
    """
    arguments: Dict[str, object] = {"autocommit": True}
    if "connect_timeout" not in conninfo_to_dict(settings.conninfo):
        arguments["connect_timeout"] = max(2, math.ceil(settings.timeout))
    return arguments


def _limitStatements(connection: psycopg.Connection, timeout: float) -> None:
    """
    Make the server cancel any statement of C{connection} that runs longer
    than C{timeout} seconds.
    """
    milliseconds = max(1, int(timeout * 1000))
    connection.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(milliseconds)))


def _secretFrom(cursor: psycopg.Cursor[Any]) -> Optional[str]:
    """
    The stored secret in the result of the query: its one column of at
    most one row, as text; C{None} for no row or a NULL.

    @raise CredentialsUnavailable: if the result has another shape.
    """
    columns = len(cursor.description or ())
    rows = cursor.fetchmany(2)
    if columns != 1:
        raise CredentialsUnavailable(f"the query returns {columns} columns; it must return only the secret")
    if len(rows) > 1:
        raise CredentialsUnavailable("the query found several rows; it must find at most one per user")
    if not rows:
        return None
    secret = rows[0][0]
    if isinstance(secret, (bytes, memoryview)):
        secret = bytes(secret).decode("utf-8", "replace")
    if secret is not None and not isinstance(secret, str):
        raise CredentialsUnavailable(f"the query returns a {type(secret).__name__}, not the secret's text")
    return secret


def _withoutPassword(text: str, conninfo: str) -> str:
    """
    C{text} with the connection string's password, if it has one, masked.
    """
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        return text
    return text.replace(str(password), "***") if password else text


def probe(settings: PostgresSettings, user: str = PROBE_USER) -> None:
    """
    Connect once, outside any pool, and run the query for a made-up user
    as a login would, with the same timeouts; return if the database
    answers in a form the backend can use (no row, or one with one
    column).  For C{python -m popsrv check}; it blocks.

    @raise CredentialsUnavailable: with a one-line reason, never holding
        the connection string's password.
    """
    try:
        connection = psycopg.connect(settings.conninfo, **_connectArguments(settings))  # type: ignore[arg-type]
    except psycopg.Error as error:
        raise CredentialsUnavailable(_withoutPassword(f"cannot connect: {_firstLine(error)}", settings.conninfo))
    with connection:
        try:
            _limitStatements(connection, settings.timeout)
            _secretFrom(connection.execute(settings.query, queryParameters(user)))
        except psycopg.errors.QueryCanceled:
            raise CredentialsUnavailable(f"the query took longer than {settings.timeout:g} s")
        except psycopg.Error as error:
            raise CredentialsUnavailable(_withoutPassword(f"the query failed: {_firstLine(error)}", settings.conninfo))


@implementer(ISecretSource)
class PostgresSecretSource:
    """
    Stored secrets found by an SQL query in PostgreSQL (see the module
    docstring for how, and L{PostgresSettings} for what it needs).

    A lookup that cannot be answered within the timeout (the database is
    down, unreachable or slow, or the query is wrong) fails with
    L{CredentialsUnavailable} and logs one line saying why; the pool
    reconnects on its own, and the next lookup after the database is back
    succeeds.  A query that finds several rows for a user is a
    configuration error: logged, and the login refused for now.
    """

    def __init__(self, settings: PostgresSettings, reactor: Any) -> None:
        self.settings = settings
        self._reactor = reactor
        self._pool: Optional[ConnectionPool] = None
        self._threads: Optional[ThreadPool] = None
        self._stopped = False
        self._failing = False
        self._connectError: Optional[str] = None

    def start(self) -> None:
        """
        Start the threads and open the connection pool (connecting in the
        background); does nothing if already started.
        """
        if self._pool is not None or self._stopped:
            return
        settings = self.settings
        source = self

        class Connection(psycopg.Connection):
            # Keeps the reason of the last failed connection attempt, for
            # the log line of a lookup that found no connection in time.
            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    connection = super().connect(*args, **kwargs)
                except psycopg.Error as error:
                    source._connectError = _firstLine(error)
                    raise
                source._connectError = None
                return connection

        kwargs = _connectArguments(settings)
        _quietPoolWarnings()
        self._threads = ThreadPool(minthreads=0, maxthreads=settings.pool, name="popsrv-pgsql")
        self._threads.start()
        self._pool = ConnectionPool(
            settings.conninfo,
            connection_class=Connection,
            kwargs=kwargs,
            min_size=1,
            max_size=settings.pool,
            open=False,
            configure=self._configure,
            check=ConnectionPool.check_connection,
            timeout=settings.timeout,
            # psycopg_pool backs off exponentially between reconnection
            # attempts; ending a series soon lets the next lookup start a
            # new one at once, so a database that is back is used at the
            # next login rather than after a long back-off.
            reconnect_timeout=max(settings.timeout, 2.0),
            name="popsrv-pgsql",
            num_workers=1,
        )
        self._pool.open(wait=False)
        log.info(
            "PostgreSQL credentials: {where}, up to {pool} connections, {timeout} s timeout",
            where=_describeConninfo(settings.conninfo), pool=settings.pool, timeout=settings.timeout,
            event="pgsql-start",
        )

    def _configure(self, connection: psycopg.Connection) -> None:
        """
        Make the server cancel any statement that runs longer than the
        timeout, so a slow query does not keep its connection busy.
        """
        _limitStatements(connection, self.settings.timeout)

    def stop(self) -> defer.Deferred[None]:
        """
        Close the connections and end the threads; later lookups fail with
        L{CredentialsUnavailable}.  The C{Deferred} fires once done.
        """
        self._stopped = True
        pool, threads = self._pool, self._threads
        self._pool = self._threads = None
        if pool is None or threads is None:
            return defer.succeed(None)
        # Closed from a thread of its own, and waited for a bounded time: the
        # pool's threads may all be stuck on a host that does not answer.
        closed: defer.Deferred[bool] = defer.Deferred()

        def settle(done: bool) -> None:
            if not closed.called:
                closed.callback(done)
        grace = self.settings.timeout + 1

        def close() -> None:
            try:
                pool.close(timeout=self.settings.timeout)
            except Exception:
                self._reactor.callFromThread(log.failure, "closing the PostgreSQL pool failed", Failure())
            self._reactor.callFromThread(settle, True)

        threading.Thread(target=close, name="popsrv-pgsql-close", daemon=True).start()
        timer = self._reactor.callLater(grace, settle, False)

        def stopThreads(inTime: bool) -> None:
            if timer.active():
                timer.cancel()
            if inTime:
                threads.stop()
            else:
                log.warn(
                    "PostgreSQL connections did not close within {grace} s; leaving them to the exit",
                    grace=grace, event="pgsql-stop-timeout",
                )

        stopped: defer.Deferred[None] = closed.addCallback(stopThreads)
        return stopped

    def secretFor(self, username: bytes) -> defer.Deferred[Optional[str]]:
        """
        Run the query for C{username}; fire with the stored secret, or
        C{None} if the query finds no row (or a NULL).
        """
        if self._stopped:
            return defer.fail(CredentialsUnavailable("the PostgreSQL credential source is stopped"))
        try:
            user = username.decode("utf-8")
        except UnicodeDecodeError:
            return defer.succeed(None)
        if "\0" in user:
            # PostgreSQL text cannot hold NUL, so no row can match.
            return defer.succeed(None)
        self.start()
        deadline = time.monotonic() + self.settings.timeout
        assert self._threads is not None
        lookup = deferToThreadPool(self._reactor, self._threads, self._lookup, user, deadline)
        # The thread gives up at the deadline, with the reason; this is for
        # a thread that cannot (a server that stopped answering mid-query).
        lookup.addTimeout(self.settings.timeout + _GRACE, self._reactor)
        lookup.addCallbacks(self._answered, self._failed, errbackArgs=(user,))
        return lookup

    def _lookup(self, user: str, deadline: float) -> Optional[str]:
        """
        Run the query in a pool thread, within the deadline.

        @raise CredentialsUnavailable: with a one-line reason.
        """
        pool = self._pool
        left = deadline - time.monotonic()
        if pool is None or left <= 0:
            raise CredentialsUnavailable("no answer in time")
        try:
            with pool.connection(timeout=left) as connection:
                return _secretFrom(connection.execute(self.settings.query, queryParameters(user)))
        except PoolTimeout:
            why = f": {self._connectError}" if self._connectError else ""
            raise CredentialsUnavailable(f"no database connection within {self.settings.timeout:g} s{why}")
        except PoolClosed:
            raise CredentialsUnavailable("the PostgreSQL credential source is stopped")
        except psycopg.errors.QueryCanceled:
            raise CredentialsUnavailable(f"the query took longer than {self.settings.timeout:g} s")
        except psycopg.Error as error:
            raise CredentialsUnavailable(f"the query failed: {_firstLine(error)}")

    def _answered(self, secret: Optional[str]) -> Optional[str]:
        if self._failing:
            self._failing = False
            log.info("PostgreSQL credential lookups work again", event="pgsql-recovered")
        return secret

    def _failed(self, failure: Failure, user: str) -> Failure:
        self._failing = True
        if failure.check(defer.TimeoutError):
            why = f"no answer within {self.settings.timeout:g} s"
            if self._connectError:
                why += f" (last connection attempt: {self._connectError})"
        elif failure.check(CredentialsUnavailable):
            why = str(failure.value)
        else:
            log.failure("PostgreSQL credential lookup for {user!r} failed", failure, user=user)
            raise CredentialsUnavailable("unexpected failure")
        log.error(
            "PostgreSQL credential lookup for {user!r} failed: {why}", user=user, why=why, event="pgsql-unavailable"
        )
        raise CredentialsUnavailable(why)


@implementer(ISecretSource, IReloadable)
class ReloadingPostgresSource:
    """
    The source of a settings file that L{reload} (SIGHUP) reads again: a
    changed file starts a new pool, which takes the next lookups at once;
    the old one stops once the lookups it was given had their time.

    @ivar path: the settings file.
    @ivar current: the L{PostgresSecretSource} of the settings in force.
    """

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor
        self.current = PostgresSecretSource(readSettings(path), reactor)
        self._retired: List[PostgresSecretSource] = []

    def start(self) -> None:
        """Start the source of the settings in force."""
        self.current.start()

    def stop(self) -> defer.Deferred[None]:
        """Stop every pool, the retired ones too."""
        sources, self._retired = [self.current, *self._retired], []
        stopped: defer.Deferred[Any] = defer.gatherResults([source.stop() for source in sources])
        return stopped.addCallback(lambda _: None)

    def secretFor(self, username: bytes) -> defer.Deferred[Optional[str]]:
        """Look C{username} up with the settings in force."""
        return self.current.secretFor(username)

    def reload(self) -> None:
        """
        Read the settings file again; use it if it changed and can be used,
        else keep the settings in force (and log why).
        """
        try:
            settings = readSettings(self.path)
        except SettingsError as error:
            log.error(
                "keeping the PostgreSQL settings in force: {error}", error=str(error), event="pgsql-reload-failed",
            )
            return
        if settings == self.current.settings:
            return
        old, self.current = self.current, PostgresSecretSource(settings, self._reactor)
        self.current.start()
        self._retired.append(old)
        self._reactor.callLater(old.settings.timeout + 1, self._retire, old)
        log.info(
            "reloaded the PostgreSQL settings from {path}: {where}", path=self.path,
            where=_describeConninfo(settings.conninfo), event="pgsql-reload",
        )

    def _retire(self, source: PostgresSecretSource) -> None:
        if source in self._retired:
            self._retired.remove(source)
            source.stop()


def reloadingSourceForReactor(path: str, reactor: Any) -> ReloadingPostgresSource:
    """
    Return the source of the settings file C{path}, reloaded on request,
    started when the reactor runs and stopped before it shuts down.
    """
    source = ReloadingPostgresSource(path, reactor)
    reactor.callWhenRunning(source.start)
    reactor.addSystemEventTrigger("before", "shutdown", source.stop)
    return source


def sourceForReactor(settings: PostgresSettings, reactor: Any) -> PostgresSecretSource:
    """
    Return a source that starts (connects) when the reactor runs and stops
    before the reactor shuts down.
    """
    source = PostgresSecretSource(settings, reactor)
    reactor.callWhenRunning(source.start)
    reactor.addSystemEventTrigger("before", "shutdown", source.stop)
    return source
