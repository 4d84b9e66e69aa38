"""
Tests for L{popsrv.auth.schemes}: every scheme verifies its own texts and refuses
wrong passwords; SHA-crypt matches the published test vectors of its
specification and C{openssl passwd}; texts written by Dovecot's C{doveadm pw}
verify, and Dovecot accepts ours; unknown and malformed texts verify nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsrv.auth import schemes
from popsrv.auth.credentials import MAX_PASSWORD_OCTETS
from popsrv.auth.schemes import SchemeError, hashPassword, parse, plaintext, scramKeys, shaCrypt, verify

# The test vectors of "Unix crypt using SHA-256 and SHA-512" (salt as given
# to crypt, rounds or None, password, expected result).
SHA256_VECTORS = [
    ("saltstring", None, "Hello world!", "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"),
    ("saltstringsaltstring", 10000, "Hello world!",
     "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"),
    ("toolongsaltstring", 5000, "This is just a test",
     "$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5"),
    ("anotherlongsaltstring", 1400,
     "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1"),
    ("short", 77777, "we have a short salt string but not a short password",
     "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/"),
    ("asaltof16chars..", 123456, "a short string",
     "$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD"),
    ("roundstoolow", 10, "the minimum number is still observed",
     "$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC"),
]
SHA512_VECTORS = [
    ("saltstring", None, "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("saltstringsaltstring", 10000, "Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/"
     "YTBmSK6H9qs/y3RnOaw5v."),
    ("toolongsaltstring", 5000, "This is just a test",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/"
     "e1JSbq3y6JMxxl8audkUEm0"),
    ("anotherlongsaltstring", 1400,
     "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o"
     "7UmJEiDwGqd8p4ur1"),
    ("short", 77777, "we have a short salt string but not a short password",
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelF"
     "l5CxtgfiAc0"),
    ("asaltof16chars..", 123456, "a short string",
     "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xX"
     "gMNrCzIMVcgEJAstJeonj1"),
    ("roundstoolow", 10, "the minimum number is still observed",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbp"
     "BYYBaHHrsX."),
]
SLOW_SCHEMES = ["ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "SCRAM-SHA-256", "SCRAM-SHA-1"]
ALL_SCHEMES = SLOW_SCHEMES + ["PLAIN"]
DOVECOT_SCHEMES = ["ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "SCRAM-SHA-256", "PLAIN"]


@pytest.mark.parametrize("salt, rounds, password, expected", SHA256_VECTORS, ids=[v[0] for v in SHA256_VECTORS])
def test_sha256CryptSpecificationVectors(salt, rounds, password, expected):
    """SHA-256 crypt gives the specification's results, and verifies them."""
    assert shaCrypt(password.encode(), salt, rounds, "5") == expected
    assert verify("{SHA256-CRYPT}" + expected, password.encode())
    assert not verify("{SHA256-CRYPT}" + expected, password.encode() + b"x")


@pytest.mark.parametrize("salt, rounds, password, expected", SHA512_VECTORS, ids=[v[0] for v in SHA512_VECTORS])
def test_sha512CryptSpecificationVectors(salt, rounds, password, expected):
    """SHA-512 crypt gives the specification's results, and verifies them."""
    assert shaCrypt(password.encode(), salt, rounds, "6") == expected
    assert verify("{SHA512-CRYPT}" + expected, password.encode())
    assert not verify("{SHA512-CRYPT}" + expected, b"Hello world")


@pytest.mark.parametrize("option, scheme", [("-5", "SHA256-CRYPT"), ("-6", "SHA512-CRYPT")])
@pytest.mark.parametrize("password", ["secret", "a", "pässwörd with spaces", "x" * 200])
@pytest.mark.parametrize("rounds", [None, 1000, 6543])
def test_shaCryptMatchesOpenSSL(option, scheme, password, rounds):
    """What `openssl passwd -5/-6` writes, with or without rounds, verifies, and we compute the same text."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed (apt-get install openssl)")
    salt = "Ab3./xyZsaltsalt"
    arguments = [openssl, "passwd", option, "-salt", salt if rounds is None else f"rounds={rounds}${salt}"]
    result = subprocess.run([*arguments, password], capture_output=True, check=True, timeout=20)
    written = result.stdout.decode().strip()
    assert verify(f"{{{scheme}}}{written}", password.encode())
    assert not verify(f"{{{scheme}}}{written}", password.encode() + b"!")
    assert shaCrypt(password.encode(), salt, rounds, option[1]) == written


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_hashThenVerify(scheme):
    """A new entry of each scheme verifies its password and no other, and checks as usable."""
    stored = hashPassword("pässword", scheme)
    assert stored.startswith(f"{{{scheme}}}")
    assert verify(stored, "pässword".encode())
    assert not verify(stored, b"password")
    assert not verify(stored, b"")
    assert schemes.checkStored(stored) == scheme
    assert schemes.isSlow(stored) == (scheme != "PLAIN")


def test_defaultSchemeIsArgon2id():
    """New entries are ARGON2ID unless asked otherwise."""
    assert hashPassword("secret").startswith("{ARGON2ID}$argon2id$")


def test_saltsAreFresh():
    """Two entries for one password differ."""
    for scheme in SLOW_SCHEMES:
        assert hashPassword("secret", scheme) != hashPassword("secret", scheme)


def test_blfCryptWritesTheDovecotPrefixAndAcceptsOthers():
    """BLF-CRYPT entries are $2y$ (as Dovecot writes them); $2b$ and $2a$ texts verify too."""
    stored = hashPassword("secret", "BLF-CRYPT")
    assert stored.startswith("{BLF-CRYPT}$2y$")
    for prefix in ("$2b$", "$2a$"):
        assert verify("{BLF-CRYPT}" + prefix + stored[len("{BLF-CRYPT}$2y$"):], b"secret")


def test_blfCryptOnlyTheFirst72OctetsCount():
    """bcrypt's 72-octet limit, as Dovecot has it: longer passwords verify, cut at 72 octets."""
    stored = hashPassword(b"a" * 100, "BLF-CRYPT")
    assert verify(stored, b"a" * 72)
    assert verify(stored, b"a" * 80 + b"b")
    assert not verify(stored, b"a" * 71)


def test_schemeNameIsCaseInsensitive():
    """{plain} is {PLAIN}."""
    assert verify("{plain}secret", b"secret")
    assert parse("{sha512-crypt}$6$x$y") == ("SHA512-CRYPT", "$6$x$y")


def test_plainIsExact():
    """PLAIN compares the whole password, octet for octet."""
    assert verify("{PLAIN}secret", b"secret")
    for wrong in (b"Secret", b"secret ", b"secre", b""):
        assert not verify("{PLAIN}secret", wrong)


def test_plaintextOnlyForPlain():
    """Only a PLAIN secret yields a plaintext."""
    assert plaintext("{PLAIN}pässword") == "pässword".encode()
    for scheme in SLOW_SCHEMES:
        assert plaintext(hashPassword("secret", scheme)) is None
    assert plaintext("secret") is None
    assert plaintext("{CLEARTEXT}secret") is None


def test_scramKeysMatchTheirMechanism():
    """scramKeys gives the keys of its own mechanism only."""
    stored = hashPassword("secret", "SCRAM-SHA-256")
    keys = scramKeys(stored, "SCRAM-SHA-256")
    assert keys is not None and keys.iterations == 4096 and len(keys.salt) == 16
    assert keys.text() == stored
    assert scramKeys(stored, "SCRAM-SHA-1") is None
    assert scramKeys("{PLAIN}secret", "SCRAM-SHA-256") is None
    assert scramKeys("{SCRAM-SHA-256}4096,nope", "SCRAM-SHA-256") is None


def test_scramKeysAreThoseOfRFC7677():
    """The keys derived for RFC 7677's example (user, pencil, its salt) give its client proof."""
    import base64
    import hashlib
    import hmac

    keys = schemes.deriveScramKeys("SCRAM-SHA-256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    authMessage = (
        b"n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    signature = hmac.new(keys.storedKey, authMessage, hashlib.sha256).digest()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    clientKey = bytes(a ^ b for a, b in zip(proof, signature))
    assert hashlib.sha256(clientKey).digest() == keys.storedKey
    serverSignature = hmac.new(keys.serverKey, authMessage, hashlib.sha256).digest()
    assert base64.b64encode(serverSignature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.mark.parametrize(
    "stored",
    [
        "secret",
        "{UNKNOWN}secret",
        "{CRYPT}abJnggxhB/yWI",
        "{MD5-CRYPT}$1$salt$hash",
        "{PLAIN",
        "",
        "{SHA512-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        "{SHA256-CRYPT}saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        "{SHA256-CRYPT}$5$rounds=x$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        "{BLF-CRYPT}$2y$05$tooShort",
        "{BLF-CRYPT}$2x$05$Yc72iDB66PEtBbKdyzjgLepV54p1cAn6xW6BpiA/NoHpWTuC2MjGC",
        "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$nothing",
        "{ARGON2ID}$argon2i$v=19$m=65536,t=3,p=4$zO9SQtB3cD44wguH5EOTkQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "{SCRAM-SHA-256}4096,c2FsdA==,AAAA,AAAA",
        "{SCRAM-SHA-256}zero,c2FsdA==,AAAA,AAAA",
        "{SCRAM-SHA-256}4096,***,AAAA,AAAA",
        "{SCRAM-SHA-256}0,c2FsdHNhbHRzYWx0,"
        "fDB6SzjoKAsn6sWMtA9uGtjDhZX8BLiFnCTiDLVbsnc=,ItvSYZ5KMYIFDt5YyTQ5/t1W+rlJT1lPDnsec8ymxcU=",
    ],
)
def test_unknownOrMalformedVerifiesNothing(stored):
    """An unknown scheme or a malformed text verifies no password and is refused by checkStored."""
    for password in (b"secret", b"", b"Hello world!", b"password"):
        assert not verify(stored, password)
    with pytest.raises(SchemeError):
        schemes.checkStored(stored)


def test_hashPasswordRefusesUnknownSchemes():
    """hashPassword names the schemes it knows when given another."""
    with pytest.raises(SchemeError, match="ARGON2ID"):
        hashPassword("secret", "MD5-CRYPT")


def test_plainCannotHoldSeparators():
    """A PLAIN entry cannot hold what would break a passwd-file line."""
    for bad in ("a:b", "a\nb"):
        with pytest.raises(SchemeError):
            hashPassword(bad, "PLAIN")


def test_plainMustBeUTF8():
    """
    A password that is not UTF-8 cannot be stored as PLAIN (a passwd file is
    UTF-8); the other schemes store its octets.
    """
    with pytest.raises(SchemeError, match="UTF-8"):
        hashPassword(b"caf\xe9", "PLAIN")
    assert verify(hashPassword(b"caf\xe9", "SHA512-CRYPT"), b"caf\xe9")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=40), st.text(alphabet="./0123456789abcXYZ", max_size=20))
def test_shaCryptRoundTrip(password, salt):
    """Any password and salt: the text verifies the password and not a changed one."""
    text = shaCrypt(password, salt, 1000, "5")
    assert verify("{SHA256-CRYPT}" + text, password)
    assert not verify("{SHA256-CRYPT}" + text, password + b"\0")


# Dovecot's own texts


def doveadm(*args: str) -> str:
    """
    Run C{doveadm pw} without any Dovecot configuration; skip when Dovecot
    is not installed (it is optional: the benchmarks use it).
    """
    path = shutil.which("doveadm")
    if path is None:
        pytest.skip("doveadm is not installed (apt-get install dovecot-core)")
    result = subprocess.run(
        [path, "-o", "stats_writer_socket_path=", "pw", *args], capture_output=True, timeout=30,
    )
    return result.stdout.decode().strip() if result.returncode == 0 else ""


@pytest.mark.parametrize("scheme", DOVECOT_SCHEMES)
def test_dovecotTextsVerify(scheme):
    """What `doveadm pw -s SCHEME` writes verifies here, and a wrong password does not."""
    stored = doveadm("-s", scheme, "-p", "pässword")
    assert stored.startswith(f"{{{scheme}}}")
    assert verify(stored, "pässword".encode())
    assert not verify(stored, b"passw0rd")


@pytest.mark.parametrize("scheme", DOVECOT_SCHEMES)
def test_dovecotVerifiesOurTexts(scheme):
    """`doveadm pw -t` accepts what hashPassword writes."""
    stored = hashPassword("pässword", scheme)
    assert "(verified)" in doveadm("-t", stored, "-p", "pässword")


def test_scramKeysAreScrampsForTheSameSalt():
    """
    popsrv's SCRAM keys are scramp's own (RFC 7677's test vector's
    password, a fixed salt), for both mechanisms.
    """
    from scramp import ScramMechanism

    salt = bytes(range(16))
    for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        keys = schemes.deriveScramKeys(mechanism, b"pencil", salt, 4096)
        _, storedKey, serverKey, _ = ScramMechanism(mechanism).make_auth_info("pencil", iteration_count=4096, salt=salt)
        assert (keys.storedKey, keys.serverKey, keys.salt, keys.iterations) == (storedKey, serverKey, salt, 4096)


@pytest.mark.parametrize("scheme, variant", [("SHA256-CRYPT", "5"), ("SHA512-CRYPT", "6")])
def test_shaCryptOfLongPasswordsIsRight(scheme: str, variant: str) -> None:
    """
    SHA-crypt of a 500-octet password verifies in Dovecot (whose libc
    refuses 512 and more).
    """
    password = (bytes(range(48, 123)) * 7)[:500]
    ours = shaCrypt(password, "saltsalt", None, variant)
    assert "verified" in doveadm("-t", f"{{{scheme}}}{ours}", "-p", password.decode())


@pytest.mark.parametrize("variant", ["5", "6"])
def test_shaCryptOfLongPasswordsIsSmall(variant: str) -> None:
    """
    SHA-crypt of a password of MAX_PASSWORD_OCTETS is made without building
    the password-times-its-length string (a megabyte here; 2.3 GB for a
    49 KB password); without Dovecot too.
    """
    tracemalloc.start()
    try:
        shaCrypt(b"p" * MAX_PASSWORD_OCTETS, "saltsalt", None, variant)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_passwordsOverTheLimitAreNeitherVerifiedNorStored() -> None:
    """
    A password longer than MAX_PASSWORD_OCTETS never matches, even the one
    stored, and cannot be stored.
    """
    long = b"p" * (MAX_PASSWORD_OCTETS + 1)
    assert not verify("{PLAIN}" + long.decode(), long)
    assert verify("{PLAIN}" + long[:-1].decode(), long[:-1])
    for scheme in ("SHA512-CRYPT", "PLAIN", "ARGON2ID"):
        with pytest.raises(SchemeError, match="longer than 1024 octets"):
            hashPassword(long, scheme)
    with pytest.raises(SchemeError):
        shaCrypt(long, "salt")


def test_loginMethodsOfStoredSchemes():
    """
    A password logs in against any known scheme; digests only against
    PLAIN; a SCRAM mechanism against its own stored keys; unknown schemes
    (and hostile names) add nothing.
    """
    from popsrv.auth.schemes import loginMethodsFor

    assert loginMethodsFor([]) == frozenset()
    assert loginMethodsFor(["ARGON2ID", "SHA512-CRYPT"]) == {"USER", "PLAIN", "LOGIN"}
    assert loginMethodsFor(["SCRAM-SHA-256"]) == {"USER", "PLAIN", "LOGIN", "SCRAM-SHA-256"}
    assert loginMethodsFor(["PLAIN"]) == {
        "USER", "PLAIN", "LOGIN", "APOP", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256",
    }
    assert loginMethodsFor(["MD5-CRYPT", "plain", "APOP", "", "\u212aELVIN"]) == frozenset()
