"""
SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) through scramp: the
exchange, its credentials, and the placeholder salts that keep the server's
first message from telling whether a user exists.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Any, Callable, List, Optional, Tuple, Union

from scramp import ScramException, ScramMechanism
from scramp.utils import ServerError
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.internet import defer
from zope.interface import implementer

from popsrv.auth.exchange import Challenge, Exchange, Lookup, SASLError, Step
from popsrv.interfaces import IScramCredentials, ScramParameters

__all__ = [
    "PLACEHOLDER_KEY_VARIABLE",
    "SCRAM_MIN_SALT_OCTETS",
    "SCRAM_SALT_OCTETS",
    "ScramCredentials",
    "ScramExchange",
    "placeholderKeyEnvironment",
    "setPlaceholderKey",
    "placeholderSalt",
]

# What scramp's auth_fn returns: salt, stored key, server key, iterations.
_AuthInfo = Tuple[bytes, bytes, bytes, int]
SCRAM_SALT_OCTETS = 16
# scramp's shortest salt: stored keys with a shorter one cannot be used in
# an exchange (Dovecot's salts have 16 octets).
SCRAM_MIN_SALT_OCTETS = 12
# The key of the placeholder salts.  A server sets it from its persistent
# secret (setPlaceholderKey) so that an unknown user's salt stays the same
# across restarts, as a real user's does; worker processes get their
# parent's through the environment, so that every process gives an unknown
# user the same salt: salts that change would tell unknown users from users
# with stored keys.
PLACEHOLDER_KEY_VARIABLE = "POPSRV_SCRAM_SALT_KEY"


def _placeholderKey() -> bytes:
    inherited = os.environ.get(PLACEHOLDER_KEY_VARIABLE, "")
    try:
        key = bytes.fromhex(inherited)
    except ValueError:
        key = b""
    return key if len(key) >= 32 else secrets.token_bytes(32)


_PLACEHOLDER_KEY = _placeholderKey()


def setPlaceholderKey(key: bytes) -> None:
    """
    Key the placeholder salts with C{key} (at least 32 octets), derived
    from a secret that outlives the process.
    """
    global _PLACEHOLDER_KEY
    if len(key) < 32:
        raise ValueError("the key of placeholder salts needs at least 32 octets")
    _PLACEHOLDER_KEY = key


def placeholderKeyEnvironment() -> dict[str, str]:
    """
    The environment that gives a child process this process's key of
    placeholder salts.
    """
    return {PLACEHOLDER_KEY_VARIABLE: _PLACEHOLDER_KEY.hex()}

def placeholderSalt(username: bytes, mechanismName: str) -> bytes:
    """
    The salt a SCRAM exchange sends for a user without stored keys: stable
    for this process, different for every user, and unpredictable.
    """
    message = mechanismName.encode("ascii") + b"\0" + username
    return hmac.new(_PLACEHOLDER_KEY, message, hashlib.sha256).digest()[:SCRAM_SALT_OCTETS]


@implementer(IUsernameHashedPassword, IScramCredentials)
class ScramCredentials:
    """
    The credentials of a SCRAM exchange (RFC 5802, RFC 7677), verified by
    replaying the exchange with the user's stored keys (L{checkKeys}) or
    with keys derived from the plaintext secret (L{checkPassword}).

    @ivar username: the SCRAM user name (unescaped, SASLprepped), UTF-8.
    @ivar mechanism: the mechanism's name.
    @ivar salt: the salt the server sent.
    @ivar iterations: the iteration count the server sent.
    @ivar serverFinal: the server's final message once a check succeeded,
        else C{None}.
    """

    def __init__(
        self,
        mechanismName: str,
        username: bytes,
        clientFirst: str,
        serverFirst: str,
        clientFinal: str,
        salt: bytes,
        iterationCount: int,
        serverNonce: str,
    ) -> None:
        self.username = username
        self.mechanism = mechanismName
        self.salt = salt
        self.iterations = iterationCount
        self.serverFinal: Optional[bytes] = None
        self._mechanismName = mechanismName
        self._clientFirst = clientFirst
        self._serverFirst = serverFirst
        self._clientFinal = clientFinal
        self._salt = salt
        self._iterationCount = iterationCount
        self._serverNonce = serverNonce

    def checkPassword(self, password: Union[str, bytes]) -> bool:
        """
        Return whether the client's proof was made with C{password} (the
        user's plaintext secret, C{str} or UTF-8 C{bytes}); on success,
        remember the server's final message.
        """
        if isinstance(password, bytes):
            try:
                password = password.decode("utf-8")
            except UnicodeDecodeError:
                return False
        scram = ScramMechanism(self._mechanismName)
        try:
            salt, storedKey, serverKey, _ = scram.make_auth_info(password, self._iterationCount, self._salt)
        except ScramException:
            return False
        return self.checkKeys(storedKey, serverKey)

    def checkKeys(self, storedKey: bytes, serverKey: bytes) -> bool:
        """
        Return whether the client's proof matches C{storedKey} (derived for
        this exchange's salt and iteration count); on success, remember the
        server's final message, made with C{serverKey}.
        """
        scram = ScramMechanism(self._mechanismName)

        def authInfo(username: str) -> _AuthInfo:
            return self._salt, storedKey, serverKey, self._iterationCount

        try:
            server = scram.make_server(authInfo, s_nonce=self._serverNonce)
            server.set_client_first(self._clientFirst)
            if server.get_server_first() != self._serverFirst:
                return False
            server.set_client_final(self._clientFinal)
            serverFinal = server.get_server_final()
        except ScramException:
            return False
        self.serverFinal = serverFinal.encode("ascii")
        return True


def _placeholderKeys(salt: bytes, iterationCount: int, names: List[str]) -> Callable[[str], _AuthInfo]:
    """
    Return a scramp C{auth_fn} that records the user name and returns
    C{salt} and C{iterationCount} with empty keys, which no proof matches.
    """

    def authInfo(username: str) -> _AuthInfo:
        names.append(username)
        return salt, b"", b"", iterationCount

    return authInfo


class ScramExchange(Exchange):
    """
    SCRAM-SHA-*: client-first, server-first, client-final; the server-final
    is left to L{successData}.
    """

    _credentials: Optional[ScramCredentials] = None

    def __init__(self, mechanismName: str, challenge: bytes, lookup: Optional[Lookup] = None) -> None:
        self._mechanismName = mechanismName
        self._lookup = lookup
        self._server: Any = None  # scramp's ScramServer, untyped

    def _step(self, response: Optional[bytes]) -> Step:
        if response is None:
            return Challenge(b"")
        try:
            message = response.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLError("a SCRAM message is not UTF-8")
        try:
            if self._server is None:
                return self._clientFirst(message)
            return self._clientFinal(message)
        except ScramException as error:
            raise SASLError(f"bad SCRAM message: {error}")

    def _clientFirst(self, message: str) -> Step:
        """
        Answer the client-first message with a server-first message: with a
        fresh salt at once, or, given a lookup, with the user's stored salt
        and iteration count (or a placeholder salt) once they are known.
        scramp rejects channel binding (C{p=}) and any authorization
        identity.
        """
        scram = ScramMechanism(self._mechanismName)
        if self._lookup is None:
            return self._serverFirstFor(message, secrets.token_bytes(SCRAM_SALT_OCTETS), int(scram.iteration_count))
        names: List[str] = []
        # Parse (and check) the message once to learn the user name.
        parser = scram.make_server(_placeholderKeys(placeholderSalt(b"", self._mechanismName), 4096, names))
        parser.set_client_first(message)
        username = self.user = names[0].encode("utf-8")

        def found(parameters: Optional[ScramParameters]) -> Challenge:
            if parameters is None or len(parameters.salt) < SCRAM_MIN_SALT_OCTETS or parameters.iterations < 1:
                parameters = ScramParameters(
                    placeholderSalt(username, self._mechanismName), int(scram.iteration_count)
                )
            try:
                return self._serverFirstFor(message, parameters.salt, parameters.iterations)
            except ScramException as error:
                raise SASLError(f"bad SCRAM message: {error}")

        lookup: defer.Deferred[Optional[ScramParameters]] = defer.maybeDeferred(
            self._lookup, username, self._mechanismName
        )
        return lookup.addCallback(found)

    def _serverFirstFor(self, message: str, salt: bytes, iterationCount: int) -> Challenge:
        """
        Answer the client-first message with a server-first message for
        C{salt}, C{iterationCount} and a fresh nonce.
        """
        scram = ScramMechanism(self._mechanismName)
        self._salt = salt
        self._iterationCount = iterationCount
        self._serverNonce = secrets.token_urlsafe(18)
        names: List[str] = []
        self._server = scram.make_server(
            _placeholderKeys(self._salt, self._iterationCount, names), s_nonce=self._serverNonce
        )
        self._server.set_client_first(message)
        self._username = self.user = names[0].encode("utf-8")
        self._clientFirstMessage = message
        self._serverFirst = self._server.get_server_first()
        return Challenge(self._serverFirst.encode("ascii"))

    def _clientFinal(self, message: str) -> ScramCredentials:
        """
        Check the client-final message's syntax, channel binding and nonce
        (everything but the proof), and return credentials that check the
        proof.
        """
        try:
            self._server.set_client_final(message)
        except ScramException as error:
            if error.server_error is not ServerError.INVALID_PROOF:
                raise
        self._credentials = ScramCredentials(
            self._mechanismName,
            self._username,
            self._clientFirstMessage,
            self._serverFirst,
            message,
            self._salt,
            self._iterationCount,
            self._serverNonce,
        )
        return self._credentials

    def successData(self) -> Optional[bytes]:
        """
        The server-final message (C{v=...}), once the credentials were
        accepted.
        """
        if self._credentials is None:
            return None
        return self._credentials.serverFinal
