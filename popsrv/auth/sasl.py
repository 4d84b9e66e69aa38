"""
SASL mechanisms for POP3's AUTH command (RFC 5034): PLAIN, LOGIN, CRAM-MD5,
SCRAM-SHA-1 and SCRAM-SHA-256.

A mechanism knows nothing about users or password storage.  It turns the
client's messages into ordinary twisted.cred credentials, and the protocol
logs in with those through its portal, exactly as it does for USER/PASS and
APOP:

  - PLAIN and LOGIN send the password itself and yield a C{UsernamePassword},
    which every C{IUsernamePassword} checker can verify;

  - CRAM-MD5 and SCRAM prove knowledge of the password without sending it.
    They yield C{IUsernameHashedPassword} providers whose C{checkPassword}
    receives the checker's I{plaintext} secret and recomputes the client's
    proof from it (the trick L{popsrv.auth.credentials.APOPCredentials} plays for
    APOP).  So only checkers that hold plaintext secrets and accept
    C{IUsernameHashedPassword} can verify them, such as Twisted's C{file:}
    and C{memory:} checkers; a checker of hashed passwords (C{unix:},
    C{file:} with a hash) cannot.  SCRAM's credentials can also be verified
    against stored SCRAM keys (L{popsrv.interfaces.IScramCredentials}), as
    L{popsrv.auth.checkers.StoredSecretChecker} does.

SCRAM normally wants salted keys stored on the server, and its first
message carries their salt and iteration count.  When the exchange is given a
C{lookup} (the protocol passes the verifying checker's
L{popsrv.interfaces.IScramParameters.scramParameters}), it asks for them
after the client's first message, and its credentials then also provide
L{popsrv.interfaces.IScramCredentials}, which the checker verifies against
the stored keys.  For a user without stored keys, and for an unknown user,
the salt is an HMAC of the user name under a key made at start-up, with the
default iteration count: stable from one exchange to the next like a stored
salt, so the server's first message does not tell whether the user exists.
Without a lookup, the salt is fresh and random for every exchange.

Either way the exchange keeps the client's messages, and a checker holding
the plaintext secret hands it to C{checkPassword}, which derives the keys
for the salt sent and replays and verifies the exchange with scramp.  The
server's final message (its own proof) becomes known only once the proof is
verified, and L{Exchange.successData} returns it.  Channel binding (the
C{-PLUS} mechanisms) and authorization identities other than the login name
are not supported.

Every mechanism is a stateless L{Mechanism} shared by all sessions; each AUTH
command runs one L{Exchange}.  Bad client data raises L{SASLError}, and
nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
from typing import Callable, Optional, Union

import attr
from scramp import ScramException, ScramMechanism
from scramp.utils import ServerError
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from popsrv.auth.credentials import HEX_DIGEST, CramMD5Credentials
from popsrv.interfaces import IScramCredentials, ScramParameters

__all__ = [
    "MECHANISMS",
    "Challenge",
    "CramMD5Credentials",
    "Exchange",
    "Mechanism",
    "SASLError",
    "ScramCredentials",
    "mechanism",
    "placeholderSalt",
]

SCRAM_SALT_OCTETS = 16
# scramp's shortest salt: stored keys with a shorter one cannot be used in
# an exchange (Dovecot's salts have 16 octets).
SCRAM_MIN_SALT_OCTETS = 12
# The key of the placeholder salts.  Worker processes get their parent's
# (through the environment), so that every process of a server gives an
# unknown user the same salt: salts that differ from one connection to the
# next would tell unknown users from users with stored keys.
PLACEHOLDER_KEY_VARIABLE = "POPSRV_SCRAM_SALT_KEY"


def _placeholderKey() -> bytes:
    inherited = os.environ.get(PLACEHOLDER_KEY_VARIABLE, "")
    try:
        key = bytes.fromhex(inherited)
    except ValueError:
        key = b""
    return key if len(key) >= 32 else secrets.token_bytes(32)


_PLACEHOLDER_KEY = _placeholderKey()


def placeholderKeyEnvironment() -> dict[str, str]:
    """
    The environment that gives a child process this process's key of
    placeholder salts.
    """
    return {PLACEHOLDER_KEY_VARIABLE: _PLACEHOLDER_KEY.hex()}

# A lookup: (user name, mechanism name) -> ScramParameters or None, or a
# Deferred of that.
Lookup = Callable[[bytes, str], object]


def placeholderSalt(username: bytes, mechanismName: str) -> bytes:
    """
    The salt a SCRAM exchange sends for a user without stored keys: stable
    for this process, different for every user, and unpredictable.
    """
    message = mechanismName.encode("ascii") + b"\0" + username
    return hmac.new(_PLACEHOLDER_KEY, message, hashlib.sha256).digest()[:SCRAM_SALT_OCTETS]


class SASLError(Exception):
    """
    The client's SASL data is malformed or unacceptable (e.g. a PLAIN authzid
    that differs from the authcid, a SCRAM message that does not parse, a
    missing part).  The protocol answers it like a failed login (C{-ERR
    [AUTH]}), so the message is for the operator's log only.
    """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Challenge:
    """
    A server challenge: the protocol sends C{"+ " + base64(data)}.
    """

    data: bytes


def _text(data: bytes, what: str) -> bytes:
    """
    Return C{data} if it is a non-empty UTF-8 string without NUL; raise
    L{SASLError} naming C{what} otherwise.
    """
    if not data:
        raise SASLError(f"the {what} is empty")
    if b"\0" in data:
        raise SASLError(f"the {what} contains NUL")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError(f"the {what} is not UTF-8")
    return data


class Exchange:
    """
    One authentication with one mechanism: one AUTH command.

    Subclasses implement C{_step}; this class checks the order of calls.
    """

    _started = False
    _finished = False

    def step(self, response: Optional[bytes]):
        """
        Advance with the client's decoded response: C{None} when AUTH had no
        initial response, C{b""} for an empty one.

        @return: a L{Challenge} to send, or, when the exchange is complete,
            the twisted.cred credentials to log in with; or a C{Deferred} of
            either when the step must look something up first (a SCRAM
            exchange given a lookup), which fails with L{SASLError} or with
            the lookup's own error.
        @raise SASLError: the client's data is malformed, or the exchange is
            already complete.
        """
        if self._finished:
            raise SASLError("the exchange is already complete")
        if response is None and self._started:
            raise SASLError("a response is missing")
        self._started = True
        try:
            result = self._step(response)
        except SASLError:
            self._finished = True
            raise
        if isinstance(result, defer.Deferred):
            # Waiting for a lookup: no other step may start meanwhile.
            self._finished = True
            return result.addCallback(self._resumed)
        if not isinstance(result, Challenge):
            self._finished = True
        return result

    def _resumed(self, result):
        if isinstance(result, Challenge):
            self._finished = False
        return result

    def _step(self, response: Optional[bytes]):
        """
        Handle one response; see L{step}.
        """
        raise NotImplementedError()

    def successData(self) -> Optional[bytes]:
        """
        Data the server must still send before its C{+OK}, once a checker
        has accepted the credentials, or C{None}.
        """
        return None


class _PlainExchange(Exchange):
    """
    PLAIN (RFC 4616): one message, C{authzid NUL authcid NUL passwd}.
    """

    def __init__(self, challenge: bytes, lookup: Optional[Lookup] = None) -> None:
        pass

    def _step(self, response: Optional[bytes]):
        if response is None:
            return Challenge(b"")
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise SASLError(f"a PLAIN message has two NULs, not {len(parts) - 1}")
        authzid, authcid, password = parts
        _text(authcid, "authentication identity")
        _text(password, "password")
        if authzid:
            _text(authzid, "authorization identity")
            if authzid != authcid:
                raise SASLError(f"authorization identity {authzid[:64]!r} is not the login name {authcid[:64]!r}")
        return UsernamePassword(authcid, password)


class _LoginExchange(Exchange):
    """
    LOGIN (draft-murchison-sasl-login): the user name, then the password.
    """

    _username: Optional[bytes] = None

    def __init__(self, challenge: bytes, lookup: Optional[Lookup] = None) -> None:
        pass

    def _step(self, response: Optional[bytes]):
        if response is None:
            return Challenge(b"Username:")
        if self._username is None:
            self._username = _text(response, "user name")
            return Challenge(b"Password:")
        return UsernamePassword(self._username, _text(response, "password"))


class _CramMD5Exchange(Exchange):
    """
    CRAM-MD5 (RFC 2195): the server's challenge, then C{user SP digest}.
    """

    _challenged = False

    def __init__(self, challenge: bytes, lookup: Optional[Lookup] = None) -> None:
        self._challenge = challenge

    def _step(self, response: Optional[bytes]):
        if not self._challenged:
            if response is not None:
                raise SASLError("CRAM-MD5 does not allow an initial response")
            self._challenged = True
            return Challenge(self._challenge)
        username, space, digest = response.rpartition(b" ")
        if not space or not HEX_DIGEST.fullmatch(digest):
            raise SASLError("a CRAM-MD5 response is a user name, a space and 32 hex digits")
        return CramMD5Credentials(self._challenge, _text(username, "user name"), digest)


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

    def checkPassword(self, password) -> bool:
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

        def authInfo(username: str):
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


def _placeholderKeys(salt: bytes, iterationCount: int, names: list) -> Callable[[str], tuple]:
    """
    Return a scramp C{auth_fn} that records the user name and returns
    C{salt} and C{iterationCount} with empty keys, which no proof matches.
    """

    def authInfo(username: str) -> tuple:
        names.append(username)
        return salt, b"", b"", iterationCount

    return authInfo


class _ScramExchange(Exchange):
    """
    SCRAM-SHA-*: client-first, server-first, client-final; the server-final
    is left to L{successData}.
    """

    _credentials: Optional[ScramCredentials] = None

    def __init__(self, mechanismName: str, challenge: bytes, lookup: Optional[Lookup] = None) -> None:
        self._mechanismName = mechanismName
        self._lookup = lookup
        self._server = None

    def _step(self, response: Optional[bytes]):
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

    def _clientFirst(self, message: str):
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
        names: list = []
        # Parse (and check) the message once to learn the user name.
        parser = scram.make_server(_placeholderKeys(placeholderSalt(b"", self._mechanismName), 4096, names))
        parser.set_client_first(message)
        username = names[0].encode("utf-8")

        def found(parameters: Optional[ScramParameters]) -> Challenge:
            if parameters is None or len(parameters.salt) < SCRAM_MIN_SALT_OCTETS or parameters.iterations < 1:
                parameters = ScramParameters(
                    placeholderSalt(username, self._mechanismName), int(scram.iteration_count)
                )
            try:
                return self._serverFirstFor(message, parameters.salt, parameters.iterations)
            except ScramException as error:
                raise SASLError(f"bad SCRAM message: {error}")

        return defer.maybeDeferred(self._lookup, username, self._mechanismName).addCallback(found)

    def _serverFirstFor(self, message: str, salt: bytes, iterationCount: int) -> Challenge:
        """
        Answer the client-first message with a server-first message for
        C{salt}, C{iterationCount} and a fresh nonce.
        """
        scram = ScramMechanism(self._mechanismName)
        self._salt = salt
        self._iterationCount = iterationCount
        self._serverNonce = secrets.token_urlsafe(18)
        names: list = []
        self._server = scram.make_server(
            _placeholderKeys(self._salt, self._iterationCount, names), s_nonce=self._serverNonce
        )
        self._server.set_client_first(message)
        self._username = names[0].encode("utf-8")
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


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Mechanism:
    """
    A SASL mechanism: stateless, shared by all sessions.

    @ivar name: the IANA name, e.g. C{"SCRAM-SHA-256"}.
    @ivar plaintext: whether the client sends the password itself.
    @ivar credentialInterface: the twisted.cred interface of the credentials
        its exchanges produce.
    """

    name: str
    plaintext: bool
    credentialInterface: InterfaceClass
    _exchangeFactory: Callable[..., Exchange] = attr.ib(repr=False)

    def exchange(self, challenge: bytes, lookup: Optional[Lookup] = None) -> Exchange:
        """
        Start one authentication.  C{challenge} is the session's unique
        APOP-style C{b"<token.time@host>"}; CRAM-MD5 sends it as its
        challenge, the others ignore it.  C{lookup}, if given, finds the
        salt and iteration count of a user's stored SCRAM keys (see
        L{popsrv.interfaces.IScramParameters}); the others ignore it.
        """
        return self._exchangeFactory(challenge, lookup)


MECHANISMS = (
    Mechanism("SCRAM-SHA-256", False, IUsernameHashedPassword, functools.partial(_ScramExchange, "SCRAM-SHA-256")),
    Mechanism("SCRAM-SHA-1", False, IUsernameHashedPassword, functools.partial(_ScramExchange, "SCRAM-SHA-1")),
    Mechanism("CRAM-MD5", False, IUsernameHashedPassword, _CramMD5Exchange),
    Mechanism("PLAIN", True, IUsernamePassword, _PlainExchange),
    Mechanism("LOGIN", True, IUsernamePassword, _LoginExchange),
)
_BY_NAME = {each.name: each for each in MECHANISMS}


def mechanism(name: Union[str, bytes]) -> Optional[Mechanism]:
    """
    Return the mechanism called C{name} (ASCII, any case), or C{None}.
    """
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    if not name.isascii():
        return None
    return _BY_NAME.get(name.upper())
