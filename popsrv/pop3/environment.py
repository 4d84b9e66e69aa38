"""
L{ConnectionEnvironment}: what a POP3 session may know of its connection
(TLS, the client's address) and its server's settings (the portal's
credentials, the plaintext policy), for the sans-IO session to ask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.internet.interfaces import IAddress, ITLSTransport, ITransport

from popsrv.auth import sasl
from popsrv.interfaces import ILoginMethods

if TYPE_CHECKING:  # pragma: no cover
    from popsrv.pop3.factory import POP3Factory

__all__ = ["ConnectionEnvironment"]


class ConnectionEnvironment:
    """
    What a session may know of its connection and server (the
    L{popsrv.pop3.session.Environment} of a L{POP3Protocol}).
    """

    def __init__(self, factory: POP3Factory) -> None:
        self._factory = factory
        self._transport: Optional[ITransport] = None
        self._peer: Optional[IAddress] = None
        self._secure = False

    def connected(self, transport: ITransport, secure: bool, peer: Optional[IAddress] = None) -> None:
        """
        The connection is made, over TLS already or not, from C{peer} (the
        client's address, as the protocol took it once from the
        transport: behind a proxy, the address the proxy reported).
        """
        self._transport = transport
        self._peer = peer if peer is not None else transport.getPeer()
        self._secure = secure

    def startTLS(self) -> None:
        """
        Start TLS on the connection (STLS), with the server's settings in
        force now.
        """
        tls = self._factory.tls
        assert tls is not None
        self._transport.startTLS(tls.options)  # type: ignore[union-attr]
        self._secure = True

    def secure(self) -> bool:
        """Whether the connection runs over TLS."""
        return self._secure

    def stlsAvailable(self) -> bool:
        """Whether STLS can start TLS on this connection now."""
        return self._factory.tls is not None and not self._secure and ITLSTransport.providedBy(self._transport)

    def plaintextAllowed(self) -> bool:
        """Whether a password may be sent in plaintext now."""
        return self._factory.policy.plaintextAllowed(self._secure, self._peer)

    def stlsWouldAllowPlaintext(self) -> bool:
        """Whether the policy allows plaintext passwords over TLS only."""
        return self._factory.policy.plaintext == "tls-only"

    def _can(self, method: str, interface: Any) -> bool:
        """
        Whether a way of logging in (C{"USER"}, C{"APOP"}, a mechanism's
        name) can succeed: the portal takes its credentials, and their
        checker, if it can tell (L{ILoginMethods}), can verify it.
        """
        checker = self._factory.portal.checkers.get(interface)
        if checker is None:
            return False
        if not ILoginMethods.providedBy(checker):
            return True
        methods = checker.loginMethods()
        return methods is None or method in methods

    def acceptsPasswords(self) -> bool:
        """Whether user names with passwords (USER/PASS) can log in."""
        return self._can("USER", IUsernamePassword)

    def acceptsAPOP(self) -> bool:
        """Whether APOP can log in."""
        return self._can("APOP", IUsernameHashedPassword)

    def mechanisms(self) -> List[sasl.Mechanism]:
        """
        The SASL mechanisms offered: those the operator chose (all by
        default) that can log in.
        """
        chosen = self._factory.saslMechanisms
        return [
            m for m in sasl.MECHANISMS
            if (chosen is None or m.name in chosen) and self._can(m.name, m.credentialInterface)
        ]
