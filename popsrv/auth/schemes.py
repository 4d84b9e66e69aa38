"""
Stored secrets: the C{{SCHEME}secret} texts of Dovecot's passwd-file and SQL
backends, so that an operator can bring users over from Dovecot as they are.

Schemes:

  - C{ARGON2ID} (and C{ARGON2I}): C{$argon2id$v=19$m=...,t=...,p=...$salt$hash},
    checked with argon2-cffi; the default for new entries;
  - C{BLF-CRYPT}: bcrypt, C{$2y$} (as Dovecot writes it), C{$2b$} or C{$2a$};
  - C{SHA512-CRYPT} and C{SHA256-CRYPT}: C{$6$} and C{$5$} SHA-crypt, with an
    optional C{rounds=N$}, computed by L{shaCrypt};
  - C{SCRAM-SHA-256} and C{SCRAM-SHA-1}: C{iterations,salt,storedkey,serverkey}
    (the last three in base64), the keys of RFC 5802;
  - C{PLAIN}: the password itself, the only scheme that lets a checker verify
    APOP and CRAM-MD5 (and SCRAM with keys derived for each exchange).

A text with an unknown scheme, or that does not parse, verifies nothing: the
user it belongs to cannot log in.  Every comparison of secrets is done in
constant time.  The slow schemes (all but C{PLAIN}) take tens to hundreds of
milliseconds of CPU on purpose: callers run L{verify} outside the reactor
thread (see L{popsrv.auth.checkers}).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from typing import Callable, Dict, FrozenSet, Iterable, Optional, Tuple, Union

import argon2
import attr
import bcrypt
from scramp import ScramMechanism
from scramp.utils import saslprep

from popsrv.auth.credentials import MAX_PASSWORD_OCTETS, passwordTooLong

__all__ = [
    "DEFAULT_SCHEME",
    "DIGEST_METHODS",
    "PASSWORD_METHODS",
    "SCHEMES",
    "SchemeError",
    "ScramKeys",
    "checkStored",
    "hashPassword",
    "isSlow",
    "loginMethodsFor",
    "parse",
    "plaintext",
    "scramKeys",
    "shaCrypt",
    "verify",
]

DEFAULT_SCHEME = "ARGON2ID"
BCRYPT_COST = 10
BCRYPT_MAX_OCTETS = 72
SHA_CRYPT_ROUNDS = 5000
SHA_CRYPT_MIN_ROUNDS = 1000
SHA_CRYPT_MAX_ROUNDS = 999999999
SHA_CRYPT_SALT_CHARS = 16
SCRAM_ITERATIONS = 4096
SCRAM_SALT_OCTETS = 16
_CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_STORED = re.compile(r"\{([A-Za-z0-9._-]+)\}(.*)", re.DOTALL)
_SHA_CRYPT = re.compile(r"\$([56])\$(?:rounds=([0-9]+)\$)?([^$]*)\$([./0-9A-Za-z]+)")
_BCRYPT = re.compile(r"\$2[aby]\$[0-9]{2}\$[./0-9A-Za-z]{53}")
_SCRAM_HASHES = {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256}


class SchemeError(ValueError):
    """
    A stored secret that cannot be used: its scheme is unknown, or its text
    does not follow the scheme's format.
    """


def parse(stored: str) -> Tuple[str, str]:
    """
    Split a stored secret C{{SCHEME}secret} into its scheme (upper case) and
    secret.

    @raise SchemeError: if C{stored} does not start with C{{SCHEME}}.
    """
    match = _STORED.fullmatch(stored)
    if match is None:
        raise SchemeError("a stored secret starts with {SCHEME}")
    return match.group(1).upper(), match.group(2)


# SHA-crypt ("Unix crypt using SHA-256 and SHA-512", Ulrich Drepper, 2007)

# The order in which the final digest's octets are encoded, three at a time
# (the first of each group is the most significant).
_SHA256_ORDER = [
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
]
_SHA512_ORDER = [
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
]


def _cryptBase64(value: int, characters: int) -> str:
    """
    Encode the low bits of C{value}, six at a time, least significant first,
    in crypt's alphabet.
    """
    out = []
    for _ in range(characters):
        out.append(_CRYPT_ALPHABET[value & 0x3F])
        value >>= 6
    return "".join(out)


def _encodeDigest(digest: bytes) -> str:
    """
    Encode a SHA-256 or SHA-512 crypt digest as the 43 or 86 characters
    that follow the salt.
    """
    if len(digest) == 32:
        groups, tail = _SHA256_ORDER, _cryptBase64((digest[31] << 8) | digest[30], 3)
    else:
        groups, tail = _SHA512_ORDER, _cryptBase64(digest[63], 2)
    body = "".join(_cryptBase64((digest[a] << 16) | (digest[b] << 8) | digest[c], 4) for a, b, c in groups)
    return body + tail


def _refuseTooLong(password: bytes) -> None:
    """
    Raise L{SchemeError} if C{password} is longer than L{MAX_PASSWORD_OCTETS}.
    """
    if passwordTooLong(password):
        raise SchemeError(f"passwords longer than {MAX_PASSWORD_OCTETS} octets are refused")


def _repeated(block: bytes, length: int) -> bytes:
    """
    C{block} repeated to exactly C{length} octets.
    """
    return (block * (length // len(block) + 1))[:length]


def shaCrypt(password: bytes, salt: str, rounds: Optional[int] = None, variant: str = "6") -> str:
    """
    Return the SHA-crypt text (C{$5$...} for C{variant} C{"5"}, SHA-256;
    C{$6$...} for C{"6"}, SHA-512) of C{password} with C{salt} (cut to 16
    characters) and C{rounds} (clamped to 1000..999999999; C{None} for the
    default 5000, which is then not written).

    @raise SchemeError: if the password is longer than L{MAX_PASSWORD_OCTETS}.
    """
    new = hashlib.sha256 if variant == "5" else hashlib.sha512
    salted = salt[:SHA_CRYPT_SALT_CHARS].encode("utf-8")
    count = SHA_CRYPT_ROUNDS if rounds is None else min(max(rounds, SHA_CRYPT_MIN_ROUNDS), SHA_CRYPT_MAX_ROUNDS)
    size = new().digest_size
    length = len(password)

    _refuseTooLong(password)

    alternate = new(password + salted + password).digest()
    first = new(password + salted)
    first.update(_repeated(alternate, length) if length else b"")
    bits = length
    while bits:
        first.update(alternate if bits & 1 else password)
        bits >>= 1
    current = first.digest()

    # The password, once for each of its octets: hashed a copy at a time,
    # never built in memory.
    repeatedPassword = new()
    for _ in range(length):
        repeatedPassword.update(password)
    passwordBytes = _repeated(repeatedPassword.digest(), length) if length else b""
    saltBytes = _repeated(new(salted * (16 + current[0])).digest(), len(salted)) if salted else b""

    for number in range(count):
        step = new()
        step.update(passwordBytes if number & 1 else current)
        if number % 3:
            step.update(saltBytes)
        if number % 7:
            step.update(passwordBytes)
        step.update(current if number & 1 else passwordBytes)
        current = step.digest()
    assert len(current) == size

    prefix = f"${variant}$" + (f"rounds={count}$" if rounds is not None else "")
    return f"{prefix}{salted.decode('utf-8')}${_encodeDigest(current)}"


def _verifyShaCrypt(variant: str, secret: str, password: bytes) -> bool:
    match = _SHA_CRYPT.fullmatch(secret)
    if match is None or match.group(1) != variant:
        raise SchemeError(f"not a ${variant}$ SHA-crypt text")
    rounds = int(match.group(2)) if match.group(2) is not None else None
    computed = shaCrypt(password, match.group(3), rounds, variant)
    return hmac.compare_digest(computed.rpartition("$")[2].encode(), match.group(4).encode())


# Argon2, bcrypt

_argon2 = argon2.PasswordHasher()


def _verifyArgon2(kind: str, secret: str, password: bytes) -> bool:
    if not secret.startswith(f"${kind}$"):
        raise SchemeError(f"not an ${kind}$ text")
    try:
        return _argon2.verify(secret, password)
    except argon2.exceptions.VerifyMismatchError:
        return False
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError) as error:
        raise SchemeError(f"unusable {kind} text: {error}")


def _verifyBcrypt(secret: str, password: bytes) -> bool:
    if not _BCRYPT.fullmatch(secret):
        raise SchemeError("not a $2y$, $2b$ or $2a$ bcrypt text")
    # Like Dovecot (and every crypt_blowfish), only the first 72 octets count.
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_OCTETS], secret.encode("ascii"))
    except ValueError as error:
        raise SchemeError(f"unusable bcrypt text: {error}")


# SCRAM


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ScramKeys:
    """
    The SCRAM keys of one user (RFC 5802, section 3), as Dovecot stores
    them.

    @ivar mechanism: C{"SCRAM-SHA-256"} or C{"SCRAM-SHA-1"}.
    """

    mechanism: str
    iterations: int
    salt: bytes
    storedKey: bytes
    serverKey: bytes

    def text(self) -> str:
        """
        The stored secret, C{{SCRAM-SHA-256}iterations,salt,storedkey,serverkey}.
        """
        fields = [base64.b64encode(each).decode("ascii") for each in (self.salt, self.storedKey, self.serverKey)]
        return f"{{{self.mechanism}}}{self.iterations}," + ",".join(fields)


def deriveScramKeys(mechanism: str, password: bytes, salt: bytes, iterations: int) -> ScramKeys:
    """
    Derive the SCRAM keys of C{password} (UTF-8, SASLprepped as SCRAM
    clients do) for C{salt} and C{iterations}.

    @raise SchemeError: if the password is not UTF-8 text SASLprep allows.
    """
    try:
        text = password.decode("utf-8")
        saslprep(text)
    except Exception as error:
        raise SchemeError(f"the password cannot be used with SCRAM: {error}")
    # scramp derives the keys (SASLprep, PBKDF2, the client and server keys)
    # exactly as its exchanges check them.
    _, storedKey, serverKey, _ = ScramMechanism(mechanism).make_auth_info(
        text, iteration_count=iterations, salt=salt
    )
    return ScramKeys(mechanism, iterations, salt, storedKey, serverKey)


def _parseScram(mechanism: str, secret: str) -> ScramKeys:
    parts = secret.split(",")
    if len(parts) != 4 or not parts[0].isdigit() or not 0 < int(parts[0]) <= 10**7:
        raise SchemeError(f"a {mechanism} secret is iterations,salt,storedkey,serverkey")
    try:
        salt, storedKey, serverKey = (base64.b64decode(each, validate=True) for each in parts[1:])
    except (binascii.Error, ValueError):
        raise SchemeError(f"a {mechanism} secret has invalid base64")
    size = _SCRAM_HASHES[mechanism]().digest_size
    if not salt or len(storedKey) != size or len(serverKey) != size:
        raise SchemeError(f"a {mechanism} secret has keys of the wrong size or no salt")
    return ScramKeys(mechanism, int(parts[0]), salt, storedKey, serverKey)


def _verifyScram(mechanism: str, secret: str, password: bytes) -> bool:
    keys = _parseScram(mechanism, secret)
    try:
        derived = deriveScramKeys(mechanism, password, keys.salt, keys.iterations)
    except SchemeError:
        return False
    stored = hmac.compare_digest(derived.storedKey, keys.storedKey)
    server = hmac.compare_digest(derived.serverKey, keys.serverKey)
    return stored and server


def _verifyPlain(secret: str, password: bytes) -> bool:
    return hmac.compare_digest(secret.encode("utf-8"), password)


_VERIFIERS: Dict[str, Callable[[str, bytes], bool]] = {
    "ARGON2ID": lambda secret, password: _verifyArgon2("argon2id", secret, password),
    "ARGON2I": lambda secret, password: _verifyArgon2("argon2i", secret, password),
    "BLF-CRYPT": _verifyBcrypt,
    "SHA512-CRYPT": lambda secret, password: _verifyShaCrypt("6", secret, password),
    "SHA256-CRYPT": lambda secret, password: _verifyShaCrypt("5", secret, password),
    "SCRAM-SHA-256": lambda secret, password: _verifyScram("SCRAM-SHA-256", secret, password),
    "SCRAM-SHA-1": lambda secret, password: _verifyScram("SCRAM-SHA-1", secret, password),
    "PLAIN": _verifyPlain,
}
SCHEMES = frozenset(_VERIFIERS)


def checkStored(stored: str) -> str:
    """
    Check that a stored secret is usable without verifying a password, and
    return its scheme: what a passwd file checks when it loads.

    @raise SchemeError: if the scheme is unknown or the text does not
        follow its format.
    """
    scheme, secret = parse(stored)
    if scheme not in SCHEMES:
        raise SchemeError(f"unknown scheme {{{scheme}}}")
    if scheme.startswith("ARGON2"):
        kind = scheme.lower()
        try:
            argon2.extract_parameters(secret)
        except argon2.exceptions.InvalidHashError as error:
            raise SchemeError(f"unusable {kind} text: {error}")
        if not secret.startswith(f"${kind}$"):
            raise SchemeError(f"not an ${kind}$ text")
    elif scheme == "BLF-CRYPT":
        if not _BCRYPT.fullmatch(secret):
            raise SchemeError("not a $2y$, $2b$ or $2a$ bcrypt text")
    elif scheme.endswith("-CRYPT"):
        variant = "6" if scheme == "SHA512-CRYPT" else "5"
        match = _SHA_CRYPT.fullmatch(secret)
        if match is None or match.group(1) != variant:
            raise SchemeError(f"not a ${variant}$ SHA-crypt text")
    elif scheme.startswith("SCRAM-"):
        _parseScram(scheme, secret)
    return scheme


def verify(stored: str, password: bytes) -> bool:
    """
    Return whether C{password} matches the stored secret C{stored}; C{False}
    (never an exception) for a scheme that is unknown or a text that does
    not parse, or a password longer than L{MAX_PASSWORD_OCTETS}.  Slow for
    every scheme but C{PLAIN}: see L{isSlow}.
    """
    if passwordTooLong(password):
        return False
    try:
        scheme, secret = parse(stored)
        verifier: Optional[Callable[[str, bytes], bool]] = _VERIFIERS.get(scheme)
        if verifier is None:
            return False
        return bool(verifier(secret, password))
    except SchemeError:
        return False


# The ways of logging in: USER/PASS, APOP and the SASL mechanisms.
PASSWORD_METHODS = frozenset({"USER", "PLAIN", "LOGIN"})
DIGEST_METHODS = frozenset({"APOP", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"})


def loginMethodsFor(storedSchemes: Iterable[str]) -> FrozenSet[str]:
    """
    The ways of logging in that secrets stored with C{storedSchemes} can
    verify: a password against any of them; every digest against C{PLAIN};
    a SCRAM mechanism against its own stored keys.
    """
    methods: set[str] = set()
    for scheme in storedSchemes:
        if scheme not in SCHEMES:
            continue
        methods |= PASSWORD_METHODS
        if scheme == "PLAIN":
            methods |= DIGEST_METHODS
        elif scheme in _SCRAM_HASHES:
            methods.add(scheme)
    return frozenset(methods)


def isSlow(stored: str) -> bool:
    """
    Whether verifying a password against C{stored} costs real CPU time
    (every known scheme but C{PLAIN}), so it belongs off the reactor thread.
    """
    try:
        scheme, _ = parse(stored)
    except SchemeError:
        return False
    return scheme in SCHEMES and scheme != "PLAIN"


def plaintext(stored: str) -> Optional[bytes]:
    """
    The password itself (UTF-8) if C{stored} is a C{{PLAIN}} secret, else
    C{None}: only those can verify APOP, CRAM-MD5 and SCRAM without stored
    keys.
    """
    try:
        scheme, secret = parse(stored)
    except SchemeError:
        return None
    return secret.encode("utf-8") if scheme == "PLAIN" else None


def scramKeys(stored: str, mechanism: str) -> Optional[ScramKeys]:
    """
    The SCRAM keys C{stored} holds for C{mechanism} (e.g.
    C{"SCRAM-SHA-256"}), or C{None} if it holds none (another scheme, or a
    text that does not parse).
    """
    try:
        scheme, secret = parse(stored)
        if scheme != mechanism or scheme not in _SCRAM_HASHES:
            return None
        return _parseScram(scheme, secret)
    except SchemeError:
        return None


def _cryptSalt() -> str:
    return "".join(secrets.choice(_CRYPT_ALPHABET) for _ in range(SHA_CRYPT_SALT_CHARS))


def hashPassword(password: Union[str, bytes], scheme: str = DEFAULT_SCHEME) -> str:
    """
    Return a new stored secret C{{SCHEME}...} for C{password} (C{str}, or
    UTF-8 C{bytes}) with a fresh random salt.  C{BLF-CRYPT} keeps only the
    first 72 octets of a password, as bcrypt always did.

    @raise SchemeError: if C{scheme} is not one L{SCHEMES} names, the
        password is longer than L{MAX_PASSWORD_OCTETS}, or it cannot be
        stored as C{PLAIN} (not UTF-8, or with a colon or a line break).
    """
    if isinstance(password, str):
        password = password.encode("utf-8")
    _refuseTooLong(password)
    scheme = scheme.upper()
    if scheme == "ARGON2ID":
        secret = _argon2.hash(password)
    elif scheme == "ARGON2I":
        secret = argon2.PasswordHasher(type=argon2.Type.I).hash(password)
    elif scheme == "BLF-CRYPT":
        hashed = bcrypt.hashpw(password[:BCRYPT_MAX_OCTETS], bcrypt.gensalt(BCRYPT_COST)).decode("ascii")
        secret = "$2y$" + hashed[4:]
    elif scheme in ("SHA512-CRYPT", "SHA256-CRYPT"):
        secret = shaCrypt(password, _cryptSalt(), None, "6" if scheme == "SHA512-CRYPT" else "5")
    elif scheme in _SCRAM_HASHES:
        keys = deriveScramKeys(scheme, password, secrets.token_bytes(SCRAM_SALT_OCTETS), SCRAM_ITERATIONS)
        return keys.text()
    elif scheme == "PLAIN":
        if b"\n" in password or b":" in password:
            raise SchemeError("a PLAIN secret cannot hold a colon or a line break")
        try:
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            raise SchemeError("a PLAIN secret must be UTF-8") from None
    else:
        raise SchemeError(f"unknown scheme {{{scheme}}}; known: {', '.join(sorted(SCHEMES))}")
    return f"{{{scheme}}}{secret}"
