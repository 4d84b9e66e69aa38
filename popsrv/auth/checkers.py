"""
A twisted.cred checker for every credential backend that stores secrets as
C{{SCHEME}secret} texts: a passwd file (L{popsrv.auth.passwdfile}), a database,
a directory.  The backend only looks secrets up (L{ISecretSource}); this
checker verifies every way of logging in against them, the same way for all
of them.

Slow hashes (Argon2, bcrypt, SHA-crypt, SCRAM key derivation) run in a
thread pool, through a runner like L{popsrv.threads.threadRunner},
and at most C{concurrency} at a time: a flood of logins then queues for the
hashing threads and never holds up the reactor, the sessions already logged
in, or the thread pool's other work (Maildir listings).  A queue longer than
C{maxWaiting} is refused with L{CredentialsUnavailable}, which tells the
client to try again later.  Cheap checks (a C{{PLAIN}} secret, stored SCRAM
keys) run at once, in this thread, but wait in the same queue: under load a
reply's time does not tell how a user's secret is stored.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Callable, FrozenSet, Optional, Tuple, Union

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from popsrv.auth import schemes
from popsrv.auth.credentials import passwordTooLong
from popsrv.errors import CredentialsUnavailable
from popsrv.interfaces import (
    IKnownSchemes,
    ILoginMethods,
    IReloadable,
    IScramCredentials,
    IScramParameters,
    ISecretSource,
    ScramParameters,
)

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_MAX_WAITING", "StoredSecretChecker"]

# Half the cores hash passwords at most: the other half stays free for the
# reactor and the sessions it serves (Argon2 itself may use several threads).
DEFAULT_CONCURRENCY = max(1, (os.cpu_count() or 1) // 2)
DEFAULT_MAX_WAITING = 256


def _reactorRunner() -> Callable[..., defer.Deferred[Any]]:
    """
    A runner over the global reactor's thread pool, for checkers made
    without one (as C{twistd}'s C{--auth} plugins are).
    """
    from twisted.internet import reactor

    from popsrv.threads import threadRunner

    return threadRunner(reactor)  # type: ignore[arg-type]  # the global reactor provides IReactorThreads


@implementer(ICredentialsChecker, IScramParameters, ILoginMethods, IReloadable)
class StoredSecretChecker:
    """
    Checks USER/PASS, PLAIN and LOGIN (C{IUsernamePassword}) against any
    stored secret, and APOP, CRAM-MD5 and SCRAM (C{IUsernameHashedPassword})
    against C{{PLAIN}} secrets; SCRAM also against stored SCRAM keys.

    An unknown user costs what a wrong password costs: the password is
    checked against a made-up hash of the default scheme.

    @ivar source: the L{ISecretSource} secrets come from.
    @ivar concurrency: how many slow hashes may run at once.
    @ivar maxWaiting: how many may wait for their turn before more logins
        are refused as unavailable.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(
        self,
        source: ISecretSource,
        runner: Optional[Callable[..., Any]] = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        maxWaiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        self.source = source
        self.concurrency = concurrency
        self.maxWaiting = maxWaiting
        self._runner = runner
        self._slots = defer.DeferredSemaphore(concurrency)
        self._dummy: Optional[str] = None

    @property
    def busy(self) -> int:
        """
        How many slow hashes are running now.
        """
        return self.concurrency - self._slots.tokens

    @property
    def waiting(self) -> int:
        """
        How many slow hashes wait for their turn.
        """
        return len(self._slots.waiting)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[Union[bytes, Tuple[()]]]:
        """
        Return a C{Deferred} firing with the user name if C{credentials}
        match the user's stored secret; failing with C{UnauthorizedLogin} if
        they do not (or there is no such user), or with the source's error
        (such as L{CredentialsUnavailable}) if it cannot answer.
        """
        return defer.ensureDeferred(self._check(credentials))

    def reload(self) -> None:
        """
        Have the source read its configuration again, if it can (see
        L{IReloadable}).
        """
        if IReloadable.providedBy(self.source):
            self.source.reload()

    def loginMethods(self) -> Optional[FrozenSet[str]]:
        """
        The ways of logging in the stored secrets can verify, if the source
        knows its schemes (see L{ILoginMethods}); else C{None}.
        """
        if not IKnownSchemes.providedBy(self.source):
            return None
        return schemes.loginMethodsFor(self.source.storedSchemes())

    def scramParameters(self, username: bytes, mechanism: str) -> defer.Deferred[Optional[ScramParameters]]:
        """
        The salt and iteration count of the C{mechanism} keys stored for
        C{username}, or C{None}; see L{IScramParameters}.
        """
        return defer.ensureDeferred(self._scramParameters(username, mechanism))

    async def _scramParameters(self, username: bytes, mechanism: str) -> Optional[ScramParameters]:
        stored = await self._lookUp(username)
        keys = schemes.scramKeys(stored, mechanism) if stored is not None else None
        if keys is None:
            return None
        return ScramParameters(keys.salt, keys.iterations)

    async def _lookUp(self, username: bytes) -> Optional[str]:
        """
        The stored secret of C{username}, or C{None}.
        """
        stored = await defer.maybeDeferred(self.source.secretFor, username)
        if stored is not None and not isinstance(stored, str):
            raise TypeError(f"{self.source!r} returned {type(stored).__name__}, not a str secret")
        return stored

    async def _check(self, credentials: Any) -> bytes:
        username = credentials.username
        stored = await self._lookUp(username)
        if IScramCredentials.providedBy(credentials):
            matched = await self._checkScram(credentials, stored)
        elif IUsernamePassword.providedBy(credentials):
            matched = await self._checkPassword(stored, credentials.password)
        elif IUsernameHashedPassword.providedBy(credentials):
            secret = schemes.plaintext(stored) if stored is not None else None
            matched = secret is not None and bool(await self._inTurn(credentials.checkPassword, secret))
        else:
            raise UnauthorizedLogin("unsupported credentials")
        if not matched:
            raise UnauthorizedLogin("no such user" if stored is None else "wrong credentials")
        name: bytes = username
        return name

    async def _checkPassword(self, stored: Optional[str], password: bytes) -> bool:
        """
        Verify a password: a C{{PLAIN}} secret at once; a hash in a thread;
        no secret, or an unusable one, against the dummy hash (same cost,
        never a match); a password longer than any scheme needs, never (it
        fails as a wrong one does).
        """
        if passwordTooLong(password):
            return False
        if stored is not None and schemes.plaintext(stored) is not None:
            return bool(await self._inTurn(schemes.verify, stored, password))
        if stored is None or not schemes.isSlow(stored):
            await self._slow(self._verifyDummy, password)
            return False
        return bool(await self._slow(schemes.verify, stored, password))

    async def _checkScram(self, credentials: Any, stored: Optional[str]) -> bool:
        """
        Verify a SCRAM exchange: against stored keys of its mechanism (cheap:
        they are already derived) if the exchange used their salt and
        iteration count; against a C{{PLAIN}} secret by deriving the keys (in
        a thread); nothing else matches.
        """
        keys = schemes.scramKeys(stored, credentials.mechanism) if stored is not None else None
        if keys is not None:
            if keys.salt != credentials.salt or keys.iterations != credentials.iterations:
                return False
            return bool(await self._inTurn(credentials.checkKeys, keys.storedKey, keys.serverKey))
        secret = schemes.plaintext(stored) if stored is not None else None
        if secret is None:
            return False
        return bool(await self._slow(credentials.checkPassword, secret))

    def _verifyDummy(self, password: bytes) -> bool:
        """
        Check a password against a made-up hash of the default scheme (made
        at first need), so an unknown user costs what a known one does.
        """
        if self._dummy is None:
            self._dummy = schemes.hashPassword(secrets.token_bytes(16))
        return schemes.verify(self._dummy, password)

    def _slow(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        Run a slow check in the runner, in its turn (see L{_inTurn}).
        """
        if self._runner is None:
            self._runner = _reactorRunner()
        return self._inTurn(self._runner, function, *args)

    def _inTurn(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        Run a check when one of the C{concurrency} slots is free: cheap
        checks (a C{{PLAIN}} secret, stored SCRAM keys) wait their turn as
        slow ones do, so that under load the time of a reply does not tell
        how a user's secret is stored.

        @raise CredentialsUnavailable: (as a failure) if C{maxWaiting}
            checks already wait.
        """
        if self._slots.tokens == 0 and len(self._slots.waiting) >= self.maxWaiting:
            return defer.fail(CredentialsUnavailable(f"{self.maxWaiting} password checks are already waiting"))
        return self._slots.run(function, *args)
