"""
SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677) through scramp: the
exchange, its credentials, and the placeholder salts that keep the server's
first message from telling whether a user exists.
"""

from __future__ import annotations

import base64
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
        withAuthzid: bool = False,
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
        self._withAuthzid = withAuthzid

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
        if self._withAuthzid:
            return self._checkProof(storedKey, serverKey)
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


    def _checkProof(self, storedKey: bytes, serverKey: bytes) -> bool:
        """
        Check the client's proof as RFC 5802 (section 3) defines it, over
        the messages as sent: scramp cannot replay an exchange whose GS2
        header names an authorization identity (the exchange checked
        everything else).
        """
        digest = _HASHES[self._mechanismName]
        bare = self._clientFirst.split(",", 2)[2]
        withoutProof, separator, proof = self._clientFinal.rpartition(",p=")
        if not separator:
            return False
        authMessage = f"{bare},{self._serverFirst},{withoutProof}".encode()
        signature = hmac.new(storedKey, authMessage, digest).digest()
        try:
            sent = base64.b64decode(proof, validate=True)
        except ValueError:
            return False
        if len(sent) != len(signature):
            return False
        clientKey = bytes(a ^ b for a, b in zip(sent, signature))
        if not hmac.compare_digest(digest(clientKey).digest(), storedKey):
            return False
        self.serverFinal = b"v=" + base64.b64encode(hmac.new(serverKey, authMessage, digest).digest())
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


_HASHES = {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256}


def _saslname(value: str) -> str:
    """
    Unescape a SCRAM C{saslname} (C{=2C} is a comma, C{=3D} an equals sign).

    @raise SASLError: another C{=} escape.
    """
    parts = value.split("=")
    out = [parts[0]]
    for part in parts[1:]:
        if part[:2] == "2C":
            out.append("," + part[2:])
        elif part[:2] == "3D":
            out.append("=" + part[2:])
        else:
            raise SASLError("a SCRAM name has a bad = escape")
    return "".join(out)


def _splitAuthzid(message: str) -> Tuple[str, Optional[str], str]:
    """
    Take a client-first message's authorization identity out of its GS2
    header (which scramp refuses whole): return the message with an empty
    one, the identity (C{None} if there was none) and the header as sent.
    """
    flag, comma, rest = message.partition(",")
    authzid, secondComma, bare = rest.partition(",")
    header = f"{flag},{authzid},"
    if not comma or not secondComma or not authzid:
        return message, None, header
    if not authzid.startswith("a="):
        raise SASLError("a SCRAM GS2 header's second part is a=NAME or nothing")
    return f"{flag},,{bare}", _saslname(authzid[2:]), header


class ScramExchange(Exchange):
    """
    SCRAM-SHA-*: client-first, server-first, client-final; the server-final
    is left to L{successData}.
    """

    _credentials: Optional[ScramCredentials] = None
    # The authorization identity the client gave, and its GS2 header as
    # sent (RFC 5802, section 7): scramp sees the message without it, and
    # the proof is checked against the header as sent.
    _authzid: Optional[str] = None
    _header = ""

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
                message, self._authzid, self._header = _splitAuthzid(message)
                return self._clientFirst(message)
            return self._clientFinal(message)
        except ScramException as error:
            raise SASLError(f"bad SCRAM message: {error}")

    def _clientFirst(self, message: str) -> Step:
        """
        Answer the client-first message with a server-first message: with a
        fresh salt at once, or, given a lookup, with the user's stored salt
        and iteration count (or a placeholder salt) once they are known.
        scramp rejects channel binding (C{p=}); an authorization identity,
        taken out of the message before, must be the login name.
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
        if self._authzid is not None and self._authzid != names[0]:
            # As PLAIN: acting for oneself is all an identity may ask.
            raise SASLError(f"authorization identity {self._authzid[:64]!r} is not the login name {names[0][:64]!r}")
        self._clientFirstMessage = message
        self._serverFirst = self._server.get_server_first()
        return Challenge(self._serverFirst.encode("ascii"))

    def _clientFinal(self, message: str) -> ScramCredentials:
        """
        Check the client-final message's syntax, channel binding and nonce
        (everything but the proof), and return credentials that check the
        proof.
        """
        checked = message
        if self._authzid is not None:
            # The channel binding must be the header as sent; scramp, which
            # saw it without the identity, checks the rest (the nonce).
            sentBinding = "c=" + base64.b64encode(self._header.encode("utf-8")).decode("ascii")
            binding, comma, rest = message.partition(",")
            if binding != sentBinding or not comma:
                raise SASLError("the SCRAM channel binding is not the GS2 header sent")
            withoutIdentity = self._header.split(",")[0] + ",,"
            checked = "c=" + base64.b64encode(withoutIdentity.encode("ascii")).decode("ascii") + "," + rest
        try:
            self._server.set_client_final(checked)
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
            withAuthzid=self._authzid is not None,
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
