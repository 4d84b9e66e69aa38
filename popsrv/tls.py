"""
TLS settings for STLS (RFC 2595): a certificate chain and key loaded into
Twisted's C{CertificateOptions}, reloadable while the server runs.

Twisted's defaults are kept (its cipher selection, no compression, server
cipher preference) with TLS 1.2 as the minimum version.  A certificate file
may hold the whole chain: the server certificate first, then the
intermediates.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl
from twisted.logger import Logger

__all__ = ["TLSConfigError", "TLSSettings", "certificateValidity", "loadCertificateOptions"]


log = Logger()


class TLSConfigError(Exception):
    """
    The certificate or key cannot be used; the message says why.
    """


def loadCertificateOptions(certificatePath: str, keyPath: str) -> ssl.CertificateOptions:
    """
    Load a PEM certificate chain and its private key into TLS options, and
    check that they can make a TLS context (the key matches the
    certificate).

    @raise TLSConfigError: if a file cannot be read or used.
    """
    try:
        with open(certificatePath, "rb") as f:
            chainPEM = f.read()
        with open(keyPath, "rb") as f:
            keyPEM = f.read()
    except OSError as error:
        raise TLSConfigError(f"cannot read {error.filename}: {error.strerror}")
    try:
        chain = x509.load_pem_x509_certificates(chainPEM)
    except ValueError:
        raise TLSConfigError(f"{certificatePath} holds no PEM certificate")
    try:
        key = serialization.load_pem_private_key(keyPEM, password=None)
        if _publicKey(key.public_key()) != _publicKey(chain[0].public_key()):
            raise TLSConfigError(
                f"cannot use {certificatePath} with {keyPath}: the key does not match the certificate"
            )
        options = ssl.CertificateOptions(
            # Twisted's annotations still name pyOpenSSL's X509 and PKey,
            # which pyOpenSSL itself deprecates in favour of these.
            privateKey=key,  # type: ignore[arg-type]
            certificate=chain[0],  # type: ignore[arg-type]
            extraCertChain=chain[1:],  # type: ignore[arg-type]
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        options.getContext()
    except TLSConfigError:
        raise
    except Exception as error:
        raise TLSConfigError(f"cannot use {certificatePath} with {keyPath}: {error}")
    return options


def _publicKey(key: Any) -> bytes:
    """
    A public key in one comparable form (DER SubjectPublicKeyInfo).
    """
    encoded: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return encoded


def certificateValidity(certificatePath: str) -> Tuple[datetime.datetime, datetime.datetime]:
    """
    When the first certificate of a PEM file (the server's, in a chain)
    becomes valid and when it expires, in UTC.

    @raise TLSConfigError: if the file cannot be read or holds no PEM
        certificate.
    """
    try:
        with open(certificatePath, "rb") as f:
            chainPEM = f.read()
    except OSError as error:
        raise TLSConfigError(f"cannot read {certificatePath}: {error.strerror}")
    try:
        certificate = x509.load_pem_x509_certificates(chainPEM)[0]
    except ValueError:
        raise TLSConfigError(f"{certificatePath} holds no PEM certificate")
    return _utc(certificate, "not_valid_before"), _utc(certificate, "not_valid_after")


def _utc(certificate: x509.Certificate, name: str) -> datetime.datetime:
    """
    A time of a certificate, aware of its time zone (UTC): cryptography 42
    gives it as C{NAME_utc}; older versions (popsrv takes 39) only as a
    naive C{NAME}, in UTC.
    """
    aware: Optional[datetime.datetime] = getattr(certificate, f"{name}_utc", None)
    if aware is not None:
        return aware
    naive: datetime.datetime = getattr(certificate, name)
    return naive.replace(tzinfo=datetime.timezone.utc)


class TLSSettings:
    """
    The TLS options STLS uses, loaded from two files and reloaded from them
    on request (C{twistd popsrv} reloads on SIGHUP), so a renewed
    certificate is used by new STLS sessions without a restart.

    @ivar options: the current C{CertificateOptions}.
    """

    def __init__(self, certificatePath: str, keyPath: str) -> None:
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.options = loadCertificateOptions(certificatePath, keyPath)

    def reload(self) -> bool:
        """
        Load the files again; keep the previous options if they are not
        usable now.  Return whether the new files were taken.
        """
        try:
            self.options = loadCertificateOptions(self.certificatePath, self.keyPath)
        except TLSConfigError as error:
            log.error("keeping the previous TLS certificate: {error}", error=str(error))
            return False
        log.info("reloaded the TLS certificate from {path}", path=self.certificatePath)
        return True
