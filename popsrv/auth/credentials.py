"""
twisted.cred credentials for POP3's own login commands.

USER/PASS uses Twisted's C{UsernamePassword}.  APOP (RFC 1939, section 7)
sends C{MD5(challenge + secret)} for the challenge in the server's greeting;
L{APOPCredentials} lets any checker that keeps plaintext secrets verify it
through the standard C{IUsernameHashedPassword} interface.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Union

from twisted.cred.credentials import IUsernameHashedPassword
from zope.interface import implementer

__all__ = ["HEX_DIGEST", "MAX_PASSWORD_OCTETS", "APOPCredentials", "CramMD5Credentials", "passwordTooLong"]

HEX_DIGEST = re.compile(rb"[0-9A-Fa-f]{32}")

# The longest password popsrv verifies or stores.  Longer ones fail as a
# wrong password does: no hashing scheme needs more, and some (SHA-crypt)
# cost time in the square of the length.
MAX_PASSWORD_OCTETS = 1024


def passwordTooLong(password: Union[str, bytes]) -> bool:
    """
    Whether C{password} (UTF-8 when a C{str}) is longer than
    L{MAX_PASSWORD_OCTETS}, so it is refused without being hashed.
    """
    if isinstance(password, str):
        password = password.encode("utf-8", "surrogatepass")
    return len(password) > MAX_PASSWORD_OCTETS


class _DigestCredentials:
    """
    Credentials proving knowledge of a secret with a digest over a server
    challenge; a checker holding the plaintext secret verifies them through
    C{IUsernameHashedPassword.checkPassword}.

    @ivar username: the login name, as sent.
    @ivar challenge: the server's C{<...>} challenge, brackets included.
    @ivar digest: the client's digest, 32 lowercase hex digits.
    """

    def __init__(self, challenge: bytes, username: bytes, digest: bytes) -> None:
        self.challenge = challenge
        self.username = username
        self.digest = digest.lower()

    def checkPassword(self, password: Union[str, bytes]) -> bool:
        """
        Return whether C{password} (the user's plaintext secret) produces the
        client's digest; compared in constant time.
        """
        if isinstance(password, str):
            password = password.encode("utf-8")
        expected = self._hexDigest(password).encode("ascii")
        return hmac.compare_digest(expected, self.digest)

    def _hexDigest(self, secret: bytes) -> str:
        raise NotImplementedError()


@implementer(IUsernameHashedPassword)
class APOPCredentials(_DigestCredentials):
    """
    The credentials of an APOP command: C{MD5(challenge + secret)}.
    """

    def _hexDigest(self, secret: bytes) -> str:
        return hashlib.md5(self.challenge + secret).hexdigest()


@implementer(IUsernameHashedPassword)
class CramMD5Credentials(_DigestCredentials):
    """
    The credentials of a CRAM-MD5 exchange (RFC 2195):
    C{HMAC-MD5(secret, challenge)}.  Unlike Twisted's own
    C{CramMD5Credentials}, this compares in constant time and accepts a
    secret as C{str} or C{bytes}.
    """

    def _hexDigest(self, secret: bytes) -> str:
        return hmac.new(secret, self.challenge, hashlib.md5).hexdigest()
