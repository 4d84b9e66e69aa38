"""
A SCRAM client written from RFC 5802 with the standard library, for tests
that need what scramp's client cannot send: an authorization identity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


class HandScramClient:
    """
    A SCRAM client written from RFC 5802 with the standard library, which
    (unlike scramp's) can send an authorization identity: as Cyrus SASL,
    GNU SASL, nmh and neomutt do, equal to the user.
    """

    def __init__(self, name: str, user: str, password: str, authzid: str = "", flag: str = "n") -> None:
        self.digest = hashlib.sha256 if name == "SCRAM-SHA-256" else hashlib.sha1
        self.password = password.encode("utf-8")
        escaped = lambda text: text.replace("=", "=3D").replace(",", "=2C")  # noqa: E731
        self.header = f"{flag},{'a=' + escaped(authzid) if authzid else ''},"
        self.bare = f"n={escaped(user)},r=clientnonce123"

    def first(self) -> bytes:
        return (self.header + self.bare).encode("utf-8")

    def final(self, serverFirst: bytes, binding: str = "") -> bytes:
        fields = dict(item.split("=", 1) for item in serverFirst.decode("ascii").split(","))
        salted = hashlib.pbkdf2_hmac(self.digest().name, self.password, base64.b64decode(fields["s"]), int(fields["i"]))
        clientKey = hmac.new(salted, b"Client Key", self.digest).digest()
        storedKey = self.digest(clientKey).digest()
        binding = binding or base64.b64encode(self.header.encode("utf-8")).decode("ascii")
        withoutProof = f"c={binding},r={fields['r']}"
        self.authMessage = f"{self.bare},{serverFirst.decode('ascii')},{withoutProof}".encode()
        signature = hmac.new(storedKey, self.authMessage, self.digest).digest()
        proof = bytes(a ^ b for a, b in zip(clientKey, signature))
        self.serverKey = hmac.new(salted, b"Server Key", self.digest).digest()
        return f"{withoutProof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def serverSignatureIs(self, serverFinal: bytes) -> bool:
        expected = base64.b64encode(hmac.new(self.serverKey, self.authMessage, self.digest).digest())
        return serverFinal == b"v=" + expected
