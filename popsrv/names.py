"""
Login names: the rules every login must follow to name a maildrop, shared by
the realm (L{popsrv.store.realm}), which refuses a login that breaks them,
and the passwd tool (L{popsrv.auth.passwdtool}), which refuses to add a user
who could never log in.

    - No character anywhere in a login may be a control character (Unicode
      category Cc, NUL included), a format character (Cf: invisible ones
      such as the soft hyphen and the zero-width joiner, and the
      bidirectional controls such as RIGHT-TO-LEFT OVERRIDE), or not UTF-8.
    - The domain (after the last C{@}) is a DNS name (L{canonicalDomain}):
      ASCII, lower-cased in ASCII only, or an internationalized domain name
      in its IDNA 2008 form, converted to its ASCII C{xn--} form.  No
      Unicode case mapping or normalization is applied to it, so look-alike
      spellings (a Kelvin sign for a K, full-width letters, a dotted capital
      I) fail to log in rather than becoming another domain's name.
    - The local part (before the last C{@}) is kept exactly as given: no
      case mapping, no normalization, so two different local parts always
      name two different directories.
    - Every value put in a path is one safe path component (see
      L{mailboxName}), so no login (C{..}, C{a/b}, a leading dot) can reach
      a directory outside the one a Maildir template's fixed text names.
"""

from __future__ import annotations

import unicodedata
from typing import Tuple, Union

import idna
from twisted.cred.error import UnauthorizedLogin

__all__ = [
    "MAX_NAME_OCTETS",
    "UnsafeMailboxName",
    "canonicalDomain",
    "canonicalLogin",
    "checkCharacters",
    "checkPlainName",
    "mailboxName",
    "splitLogin",
]

MAX_NAME_OCTETS = 255
MAX_LABEL_OCTETS = 63
MAX_DOMAIN_OCTETS = 253

# The bidirectional controls: all of them are format characters (Cf), named
# here so that they are refused whatever Unicode version Python has.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ACE_PREFIX = "xn--"


class UnsafeMailboxName(UnauthorizedLogin):
    """
    A login name that cannot name a maildrop directory; the login fails.
    """


def checkCharacters(name: str, what: str) -> None:
    """
    Raise L{UnsafeMailboxName}, saying which part of the login (C{what}) and
    which character, if C{name} is not UTF-8 or has a control or format
    character.
    """
    for char in name:
        category = unicodedata.category(char)
        if category == "Cs":
            raise UnsafeMailboxName(f"{what} is not UTF-8")
        if char in BIDI_CONTROLS:
            raise UnsafeMailboxName(f"{what} has a bidirectional control character (U+{ord(char):04X})")
        if category == "Cc":
            raise UnsafeMailboxName(f"{what} has a control character (U+{ord(char):04X})")
        if category == "Cf":
            raise UnsafeMailboxName(f"{what} has an invisible format character (U+{ord(char):04X})")


def checkPlainName(name: str, what: str) -> None:
    """
    Raise L{UnsafeMailboxName}, saying which part of the login (C{what}) is
    not, if C{name}, whose characters L{checkCharacters} has passed, is not
    one plain file name: 1 to 255 octets, no C{/} or C{\\}, no leading dot.
    """
    if not 0 < len(name.encode("utf-8")) <= MAX_NAME_OCTETS:
        raise UnsafeMailboxName(f"{what} is empty or too long")
    if name.startswith(".") or "/" in name or "\\" in name:
        raise UnsafeMailboxName(f"{what} is not a plain file name")


def mailboxName(avatarId: Union[bytes, str]) -> str:
    """
    Return the avatar id as a directory name, or raise L{UnsafeMailboxName}.

    A safe name is UTF-8, 1 to 255 octets, has no C{/} or C{\\}, no
    control character (NUL included) or format character (such as the
    bidirectional controls), and does not start with a dot.
    """
    if isinstance(avatarId, str):
        name = avatarId
    else:
        try:
            name = bytes(avatarId).decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeMailboxName("login name is not UTF-8")
    checkCharacters(name, "login name")
    checkPlainName(name, "login name")
    return name


def _shown(text: str) -> str:
    """
    C{text} with each character but printable ASCII shown as C{<U+XXXX>},
    to quote in a log.
    """
    return "".join(char if " " <= char <= "~" else f"<U+{ord(char):04X}>" for char in text)


def _label(label: str, what: str) -> str:
    """
    One label of a domain (its ASCII letters already lower-case) as it is
    in the domain's canonical form, or raise L{UnsafeMailboxName}.
    """
    if not label:
        raise UnsafeMailboxName(f"{what} has an empty label")
    try:
        if not label.isascii():
            # IDNA 2008 alone, without the UTS 46 mappings that would make
            # a Kelvin sign a k or a full-width letter an ASCII one: a label
            # that is not already a valid U-label is refused.
            if unicodedata.normalize("NFC", label) != label:
                raise idna.IDNAError(f"{label} is not in Unicode normalization form C")
            label = idna.alabel(label).decode("ascii")
        elif label.startswith(_ACE_PREFIX):
            # It must be the A-label of a valid U-label, and the one IDNA
            # makes of it (Punycode can spell one U-label several ways).
            if idna.alabel(idna.ulabel(label)).decode("ascii") != label:
                raise idna.IDNAError(f"{label} is not the A-label of the U-label it spells")
    except UnicodeError as error:
        raise UnsafeMailboxName(f"{what} has a label that is neither ASCII nor valid IDNA 2008: {_shown(str(error))}")
    if len(label) > MAX_LABEL_OCTETS:
        raise UnsafeMailboxName(f"{what} has a label longer than {MAX_LABEL_OCTETS} octets")
    return label


def canonicalDomain(domain: str) -> str:
    """
    The canonical form of the domain of a login name, or raise
    L{UnsafeMailboxName} if it is not a domain name; C{""} stays C{""}.

    A domain is ASCII, or an internationalized domain name whose labels are
    valid IDNA 2008 U-labels (lower-case, in Unicode normal form C) or
    A-labels (C{xn--...}).  Its canonical form is ASCII: the letters C{A}
    to C{Z} are lower-cased, and nothing else; each U-label becomes its
    A-label (so C{bücher.example} is C{xn--bcher-kva.example}).  No Unicode
    case mapping or compatibility mapping is applied: a domain that needs
    one to be valid (C{\u212aey.example} with a Kelvin sign,
    C{\u0130stanbul.example} with a dotted capital I, full-width letters or
    full stops) is refused rather than taken for another.  Labels are
    separated by C{.} alone, are 1 to 63 octets, and the canonical domain is
    at most 253 octets.
    """
    what = "domain of the login name"
    if not domain:
        return domain
    checkCharacters(domain, what)
    labels = [_label(label, what) for label in domain.translate(_ASCII_LOWER).split(".")]
    canonical = ".".join(labels)
    if len(canonical) > MAX_DOMAIN_OCTETS:
        raise UnsafeMailboxName(f"{what} is longer than {MAX_DOMAIN_OCTETS} octets")
    return canonical


def splitLogin(login: str) -> Tuple[str, str]:
    """
    Split a login name into its local part, as given, and its domain in
    canonical form (L{canonicalDomain}): at the last C{@}, or, without one,
    into the whole login and C{""}.

    @raise UnsafeMailboxName: if the domain is not a domain name.
    """
    local, at, domain = login.rpartition("@")
    if not at:
        return login, ""
    return local, canonicalDomain(domain)


def canonicalLogin(login: str) -> str:
    """
    The login name with its domain in canonical form (domains are not
    case-sensitive, local parts may be; see L{canonicalDomain}): the name of
    its maildrop in replies and logs, and the key of the login delay.

    @raise UnsafeMailboxName: if the domain is not a domain name.
    """
    local, domain = splitLogin(login)
    return f"{local}@{domain}" if "@" in login else login
