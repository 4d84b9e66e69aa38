"""
TLS versions: STLS refuses anything older than TLS 1.2, over real TCP.
"""

from __future__ import annotations

import contextlib
import poplib
import ssl
import warnings

import pytest

from tests.support.certificates import makePKI


def clientContext(ca, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """
    A client context that trusts the test CA and offers TLS up to
    C{maximum}, old versions included.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def test_stlsRefusesTLS11(launcher, tmp_path):
    """
    A client that offers at most TLS 1.1 gets the server's protocol_version
    alert; TLS 1.2 and 1.3 work.
    """
    pki = makePKI(tmp_path / "pki")
    server = launcher.popsrv("--tls-cert", str(pki.chain), "--tls-key", str(pki.key))
    versions = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        oldest = ssl.TLSVersion.TLSv1_1
    for maximum in (oldest, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client = poplib.POP3("127.0.0.1", server.port, timeout=10)
        try:
            client.stls(clientContext(pki.ca, maximum))
            versions[maximum] = client.sock.version()
        except ssl.SSLError as error:
            versions[maximum] = error.reason
        finally:
            with contextlib.suppress(OSError):
                client.close()
    if versions[oldest] == "NO_PROTOCOLS_AVAILABLE":
        pytest.skip("this OpenSSL cannot offer TLS 1.1 as a client, so the refusal cannot be shown")
    assert versions == {
        oldest: "TLSV1_ALERT_PROTOCOL_VERSION",
        ssl.TLSVersion.TLSv1_2: "TLSv1.2",
        ssl.TLSVersion.TLSv1_3: "TLSv1.3",
    }


def test_certificateFileWithTheWholeChain(tmp_path):
    """
    The certificate file may hold the chain: the server's certificate
    first, then its issuers, all sent to the client.
    """
    from OpenSSL import SSL

    from popsrv.tls import loadCertificateOptions

    pki = makePKI(tmp_path)
    options = loadCertificateOptions(str(pki.chain), str(pki.key))
    context = options.getContext()
    assert isinstance(context, SSL.Context)
    assert options.extraCertChain is not None and len(options.extraCertChain) == 1


@pytest.mark.parametrize("content", [b"", b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_certificateFileWithoutCertificate(tmp_path, content):
    """
    A certificate file with no certificate in it stops the start with one
    clear line naming the file.
    """
    from popsrv.tls import TLSConfigError, loadCertificateOptions

    pki = makePKI(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    with pytest.raises(TLSConfigError) as caught:
        loadCertificateOptions(str(bad), str(pki.key))
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)
