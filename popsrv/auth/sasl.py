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
are not supported; one equal to it (C{n,a=alice,n=alice,...}, as Cyrus and
GNU SASL clients, nmh and neomutt send) is, as with PLAIN.

Every mechanism is a stateless L{Mechanism} shared by all sessions; each AUTH
command runs one L{Exchange}.  Bad client data raises L{SASLError}, and
nothing else.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import attr
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from zope.interface.interface import InterfaceClass

from popsrv.auth.credentials import HEX_DIGEST, CramMD5Credentials
from popsrv.auth.exchange import Challenge, Exchange, Lookup, SASLError, Step, checkedText
from popsrv.auth.scram import ScramCredentials, ScramExchange, placeholderKeyEnvironment, placeholderSalt

__all__ = [
    "MECHANISMS",
    "Challenge",
    "CramMD5Credentials",
    "Exchange",
    "Mechanism",
    "SASLError",
    "ScramCredentials",
    "mechanism",
    "placeholderKeyEnvironment",
    "placeholderSalt",
]

class _PlainExchange(Exchange):
    """
    PLAIN (RFC 4616): one message, C{authzid NUL authcid NUL passwd}.
    """

    def __init__(self, challenge: bytes, lookup: Optional[Lookup] = None) -> None:
        pass

    def _step(self, response: Optional[bytes]) -> Step:
        if response is None:
            return Challenge(b"")
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise SASLError(f"a PLAIN message has two NULs, not {len(parts) - 1}")
        authzid, authcid, password = parts
        self.user = authcid
        checkedText(authcid, "authentication identity")
        checkedText(password, "password")
        if authzid:
            checkedText(authzid, "authorization identity")
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

    def _step(self, response: Optional[bytes]) -> Step:
        if response is None:
            return Challenge(b"Username:")
        if self._username is None:
            self.user = response
            self._username = checkedText(response, "user name")
            return Challenge(b"Password:")
        return UsernamePassword(self._username, checkedText(response, "password"))


class _CramMD5Exchange(Exchange):
    """
    CRAM-MD5 (RFC 2195): the server's challenge, then C{user SP digest}.
    """

    _challenged = False

    def __init__(self, challenge: bytes, lookup: Optional[Lookup] = None) -> None:
        self._challenge = challenge

    def _step(self, response: Optional[bytes]) -> Step:
        if not self._challenged:
            if response is not None:
                raise SASLError("CRAM-MD5 does not allow an initial response")
            self._challenged = True
            return Challenge(self._challenge)
        if response is None:
            raise SASLError("a response is missing")
        username, space, digest = response.rpartition(b" ")
        self.user = username
        if not space or not HEX_DIGEST.fullmatch(digest):
            raise SASLError("a CRAM-MD5 response is a user name, a space and 32 hex digits")
        return CramMD5Credentials(self._challenge, checkedText(username, "user name"), digest)


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
    Mechanism("SCRAM-SHA-256", False, IUsernameHashedPassword, functools.partial(ScramExchange, "SCRAM-SHA-256")),
    Mechanism("SCRAM-SHA-1", False, IUsernameHashedPassword, functools.partial(ScramExchange, "SCRAM-SHA-1")),
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
