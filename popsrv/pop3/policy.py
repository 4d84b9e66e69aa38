"""
Login policy: which ways of logging in a session may use, and how often a
user may log in.

    - Plaintext logins (USER/PASS, SASL PLAIN and LOGIN send the password
      itself) are allowed C{always}, C{never}, or, by default, C{tls-only}:
      over TLS or from a loopback address only (as Dovecot does by
      default). APOP, CRAM-MD5 and SCRAM never send the password and are
      not restricted.
    - LOGIN-DELAY (RFC 2449): a user may log in at most once every so many
      seconds.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from twisted.internet.address import UNIXAddress

from popsrv.wire.proxied import ProxiedAddress

__all__ = ["PLAINTEXT_POLICIES", "LoginPolicy", "isLoopback"]

PLAINTEXT_POLICIES = ("tls-only", "always", "never")


def isLoopback(address: object) -> bool:
    """
    Whether a peer address (a Twisted address object) is on this machine:
    127.0.0.0/8, ::1 or an IPv4-mapped loopback address, or a UNIX socket.

    A client behind a proxy (a L{ProxiedAddress}) is on this machine only if
    both are: the client's address in the PROXY header, and the proxy's
    own connection (a password from the proxy's loopback would otherwise
    cross the network from the proxy to here).
    """
    if isinstance(address, ProxiedAddress):
        return isLoopback(address.client) and isLoopback(address.proxy)
    if isinstance(address, UNIXAddress):
        return True
    host = getattr(address, "host", None)
    if host is None:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


class LoginPolicy:
    """
    The login rules of one server.

    @ivar plaintext: one of L{PLAINTEXT_POLICIES}.
    @ivar loginDelay: minimum seconds between two logins of one user, or
        C{None} for no minimum (and no LOGIN-DELAY capability).
    """

    def __init__(self, plaintext: str = "tls-only", loginDelay: Optional[int] = None) -> None:
        if plaintext not in PLAINTEXT_POLICIES:
            raise ValueError(f"plaintext policy must be one of {', '.join(PLAINTEXT_POLICIES)}")
        if loginDelay is not None and loginDelay < 0:
            raise ValueError("the login delay cannot be negative")
        self.plaintext = plaintext
        self.loginDelay = loginDelay
        self._lastLogin: dict[object, float] = {}

    def plaintextAllowed(self, secure: bool, peer: object) -> bool:
        """
        Whether a session may send a password in plaintext now.

        @param secure: whether the session runs over TLS.
        @param peer: the client's address.
        """
        if self.plaintext == "always":
            return True
        if self.plaintext == "never":
            return False
        return secure or isLoopback(peer)

    def mayLogIn(self, avatarId: object, now: float) -> bool:
        """
        Whether C{avatarId} may log in at time C{now}: not sooner than the
        login delay after the user's last successful login.
        """
        if self.loginDelay is None:
            return True
        last = self._lastLogin.get(avatarId)
        return last is None or now - last >= self.loginDelay

    def loggedIn(self, avatarId: object, now: float) -> None:
        """
        Record a successful login (one that got its maildrop), from which the
        login delay counts.
        """
        if self.loginDelay is None:
            return
        self._lastLogin[avatarId] = now
        if len(self._lastLogin) > 100000:
            self._forgetOld(now)

    def _forgetOld(self, now: float) -> None:
        """
        Drop logins older than the delay: they no longer restrict anything.
        """
        delay = self.loginDelay or 0
        self._lastLogin = {who: when for who, when in self._lastLogin.items() if now - when < delay}
