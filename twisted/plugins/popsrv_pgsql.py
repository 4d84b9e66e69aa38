"""
Makes C{--auth pgsql:FILE} available: users' stored secrets come from
PostgreSQL, as FILE says.  Importing this module imports neither psycopg nor
the backend; only using the checker does.
"""

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

HELP = """\
Users and their stored secrets ({SCHEME}secret, as Dovecot stores them)
come from PostgreSQL. The argument is the path of a settings file:

    [pgsql]
    conninfo = host=db.example.org dbname=mail user=popsrv password=...
    query = SELECT password FROM users WHERE userid = %(user)s
    timeout = 3
    pool = 4

conninfo is a libpq connection string or URI. The query returns the secret
(one column, at most one row); it gets the login name only as the
placeholders %(user)s, %(localpart)s and %(domain)s (the name split at its
last @); write a literal % as %%. timeout (seconds, default 3) bounds a
lookup, connecting included; pool (default 4) is the most connections.
While the database is down or slow, logins get -ERR [SYS/TEMP].
"""


@implementer(ICheckerFactory, IPlugin)
class PostgresCheckerFactory:
    """
    Builds the stored-secret checker over a PostgreSQL source from a
    settings file.
    """

    authType = "pgsql"
    authHelp = HELP
    argStringFormat = "Path of a settings file ([pgsql] with conninfo, query, timeout, pool)."
    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, reactor=None) -> None:
        self.reactor = reactor

    def generateChecker(self, argstring: str):
        """
        Read the settings file C{argstring} and return the checker; the
        source connects when the reactor starts, and reads the file again
        on SIGHUP.
        """
        try:
            from popsrv.auth.pgsql import reloadingSourceForReactor
        except ImportError as error:
            if not (error.name or "").startswith("psycopg"):
                raise
            raise ValueError("pgsql needs psycopg: pip install 'popsrv[pgsql]'")
        if not argstring.strip():
            raise ValueError("pgsql needs the path of its settings file: --auth pgsql:/etc/popsrv/pgsql.conf")
        try:
            from popsrv.auth.checkers import StoredSecretChecker
        except ModuleNotFoundError as error:
            if error.name != "popsrv.auth.checkers":
                raise
            raise ValueError("pgsql needs popsrv.auth.checkers.StoredSecretChecker, which this popsrv lacks")
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        return StoredSecretChecker(reloadingSourceForReactor(argstring, reactor))

pgsql = PostgresCheckerFactory()
