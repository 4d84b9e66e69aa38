"""
twisted.cred credentials for POP3's own login commands.

USER/PASS uses Twisted's L{UsernamePassword}.  APOP (RFC 1939, section 7)
sends C{MD5(challenge + secret)} for the challenge in the server's greeting;
L{APOPCredentials} lets any checker that keeps plaintext secrets verify it
through the standard L{IUsernameHashedPassword} interface.
"""

from __future__ import annotations

import hashlib
import hmac

from twisted.cred.credentials import IUsernameHashedPassword
from zope.interface import implementer

__all__ = ["APOPCredentials"]


@implementer(IUsernameHashedPassword)
class APOPCredentials:
    """
    The credentials of an APOP command.

    @ivar username: the login name, as sent.
    @ivar challenge: the C{<...>} string of the greeting, brackets included.
    @ivar digest: the client's digest, 32 lowercase hex digits.
    """

    def __init__(self, challenge: bytes, username: bytes, digest: bytes) -> None:
        self.challenge = challenge
        self.username = username
        self.digest = digest.lower()

    def checkPassword(self, password) -> bool:
        """
        Return whether C{password} (the user's plaintext secret) produces the
        client's digest; compared in constant time.
        """
        if isinstance(password, str):
            password = password.encode("utf-8")
        expected = hashlib.md5(self.challenge + password).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest)
