"""
The realm: from an authenticated user to that user's maildrop.

Where a user's Maildir is comes from a L{MaildirTemplate} such as
C{/var/vmail/%d/%n}, filled in with parts of the login name.  The rules for
login names are here, in one place:

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
      a directory outside the one the template's fixed text names.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Callable, List, Optional, Tuple, Type, Union

import idna
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from zope.interface import Interface, implementer

from popsrv.interfaces import IMaildrop
from popsrv.store.maildir import MaildirMaildrop
from popsrv.threads import Runner

__all__ = [
    "BadMaildirTemplate",
    "MaildirRealm",
    "MaildirTemplate",
    "UnsafeMailboxName",
    "canonicalDomain",
    "canonicalLogin",
    "mailboxName",
    "splitLogin",
]

MAX_NAME_OCTETS = 255
MAX_LABEL_OCTETS = 63
MAX_DOMAIN_OCTETS = 253
PLACEHOLDERS = ("u", "n", "d")

# The bidirectional controls: all of them are format characters (Cf), named
# here so that they are refused whatever Unicode version Python has.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ACE_PREFIX = "xn--"


class UnsafeMailboxName(UnauthorizedLogin):
    """
    A login name that cannot name a maildrop directory; the login fails.
    """


class BadMaildirTemplate(ValueError):
    """
    A Maildir template that cannot be used: an unknown C{%} placeholder, no
    placeholder naming the user, or a C{.} or C{..} component.
    """


def _checkCharacters(name: str, what: str) -> None:
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


def _checkComponent(name: str, what: str) -> str:
    """
    Return C{name} if it is one safe path component, or raise
    L{UnsafeMailboxName} saying which part of the login (C{what}) is not.
    """
    _checkCharacters(name, what)
    if not 0 < len(name.encode("utf-8")) <= MAX_NAME_OCTETS:
        raise UnsafeMailboxName(f"{what} is empty or too long")
    if name.startswith(".") or "/" in name or "\\" in name:
        raise UnsafeMailboxName(f"{what} is not a plain file name")
    return name


def mailboxName(avatarId: Union[bytes, str]) -> str:
    """
    Return the avatar id as a directory name, or raise L{UnsafeMailboxName}.

    A safe name is UTF-8, 1 to 255 octets, has no C{/} or C{\\}, no
    control character (NUL included) or format character (such as the
    bidirectional controls), and does not start with a dot.
    """
    if isinstance(avatarId, str):
        raw = avatarId.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(avatarId)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeMailboxName("login name is not UTF-8")
    return _checkComponent(name, "login name")


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
    _checkCharacters(domain, what)
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


class MaildirTemplate:
    """
    Where each user's Maildir is: a path with placeholders filled in from
    the login name, C{%u} (the login as given), C{%n} (its local part,
    before the last C{@}, as given; the whole login if it has none), C{%d}
    (its domain, after the last C{@}, in canonical form: see
    L{canonicalDomain}) and C{%%} (a C{%}).

    The template's fixed text is the operator's and is trusted; every
    placeholder's value must be a safe path component (see L{mailboxName}),
    so a Maildir is always inside L{base}.  A login without a domain cannot
    fill C{%d}: it fails to log in, and so does a login whose domain is not
    a domain name, whether the template uses C{%d} or not.  C{%u} and
    C{%n} are never case-mapped or normalized, so two logins share a
    Maildir only if they differ in their domains alone, and those are two
    spellings of one domain (C{Example.COM} and C{example.com};
    C{bücher.example} and C{xn--bcher-kva.example}).

    @ivar text: the template as given.
    @ivar base: the absolute directory named by the fixed text before the
        first placeholder; every Maildir is below it.
    @ivar uses: the placeholder letters the template uses (C{u}, C{n},
        C{d}).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        pieces = _parseTemplate(text)
        self.uses = frozenset(piece for piece, isCode in pieces if isCode)
        if not self.uses & {"u", "n"}:
            raise BadMaildirTemplate(f"Maildir template {text!r} needs %u or %n, so that users get their own Maildirs")
        prefix = "" if pieces[0][1] else pieces.pop(0)[0]
        cut = prefix.rfind("/") + 1
        self.base = os.path.abspath(prefix[:cut] or ".")
        if prefix[cut:]:
            pieces.insert(0, (prefix[cut:], False))
        self._pieces = pieces
        _checkSeparated(text, pieces)
        shape = "".join("\0" if isCode else piece for piece, isCode in pieces)
        if any(component in (".", "..") for component in shape.split("/")):
            raise BadMaildirTemplate(f"Maildir template {text!r} has a . or .. after its first placeholder")

    @classmethod
    def forRoot(cls, root: str) -> MaildirTemplate:
        """
        The template of one Maildir per login under C{root}: C{root/%u}.
        """
        return cls(os.path.join(root.replace("%", "%%"), "%u"))

    def expand(self, login: str) -> str:
        """
        Return the Maildir path of a login name, or raise
        L{UnsafeMailboxName} if its domain is not a domain name, or a part
        of the login the template uses is not a safe path component (or is
        missing, as C{%d} without a domain).
        """
        local, domain = splitLogin(login)
        _checkCharacters(local, "local part of the login name" if "@" in login else "login name")
        values = {"u": login, "n": local, "d": domain}
        names = {"u": "login name", "n": "local part of the login name", "d": "domain of the login name"}
        if "d" in self.uses and not domain:
            raise UnsafeMailboxName("login name has no @domain, which %d in the Maildir template needs")
        for code in self.uses:
            _checkComponent(values[code], names[code])
        relative = "".join(values[piece] if isCode else piece for piece, isCode in self._pieces)
        for component in relative.split("/"):
            if len(component.encode("utf-8", "surrogatepass")) > MAX_NAME_OCTETS:
                raise UnsafeMailboxName("login name makes a directory name that is too long")
        return os.path.join(self.base, relative)


def _checkSeparated(text: str, pieces: List[Tuple[str, bool]]) -> None:
    """
    Refuse a template in which two placeholders are not kept apart by a
    C{/} (or are C{%n@%d}, the login itself): in C{%n.%d}, logins
    C{a.b@c} and C{a@b.c} would share a Maildir.
    """
    previous, between = None, ""
    for piece, isCode in pieces:
        if not isCode:
            between += piece
            continue
        if previous is not None and "/" not in between and not (previous + between + piece == "n@d"):
            raise BadMaildirTemplate(
                f"Maildir template {text!r} has %{previous} and %{piece} without a / between them, "
                "so two logins could share a Maildir"
            )
        previous, between = piece, ""


def _parseTemplate(text: str) -> List[Tuple[str, bool]]:
    """
    Split a template into pieces: C{(literal text, False)} or
    C{(placeholder letter, True)}; adjacent literal text is merged.
    """
    pieces: List[Tuple[str, bool]] = []
    literal = []
    position = 0
    while position < len(text):
        char = text[position]
        if char != "%":
            literal.append(char)
            position += 1
            continue
        code = text[position + 1:position + 2]
        if code == "%":
            literal.append("%")
        elif code in PLACEHOLDERS:
            if literal:
                pieces.append(("".join(literal), False))
                literal = []
            pieces.append((code, True))
        else:
            shown = f"%{code}" if code else "a lone % at the end"
            raise BadMaildirTemplate(
                f"Maildir template {text!r} has {shown}: use %u (login), %n (local part), "
                "%d (domain) or %% (a literal %)"
            )
        position += 2
    if literal:
        pieces.append(("".join(literal), False))
    return pieces


@implementer(IRealm)
class MaildirRealm:
    """
    A realm whose users' maildrops are Maildirs: one per login under a root
    directory (user C{alice}'s is C{<root>/alice/}), or wherever a
    L{MaildirTemplate} puts them.

    @ivar template: the L{MaildirTemplate}.
    @ivar root: the directory every Maildir is below (the template's
        L{MaildirTemplate.base}).
    @ivar runner: how the maildrops do their blocking file work (see
        L{MaildirMaildrop}); C{None} runs it inline.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        runner: Optional[Runner] = None,
        template: Union[MaildirTemplate, str, None] = None,
    ) -> None:
        if (root is None) == (template is None):
            raise TypeError("MaildirRealm takes either a root directory or a template")
        if root is not None:
            template = MaildirTemplate.forRoot(root)
        elif isinstance(template, str):
            template = MaildirTemplate(template)
        assert template is not None
        self.template = template
        self.root = template.base
        self.runner = runner

    def maildropFor(self, avatarId: Union[bytes, str]) -> MaildirMaildrop:
        """
        Return the maildrop of one user, whose name must be safe; it is named
        by the login with its domain in canonical form (L{canonicalLogin}).
        """
        login = mailboxName(avatarId)
        path = self.template.expand(login)
        return MaildirMaildrop(path, canonicalLogin(login), runner=self.runner)

    def requestAvatar(
        self, avatarId: Union[bytes, str, Tuple[()]], mind: object, *interfaces: Type[Interface]
    ) -> Tuple[Type[Interface], IMaildrop, Callable[[], None]]:
        """
        Return C{(IMaildrop, maildrop, logout)} for the user C{avatarId}.
        """
        if IMaildrop not in interfaces:
            raise NotImplementedError("MaildirRealm only provides IMaildrop")
        if not isinstance(avatarId, (bytes, str)):
            raise UnauthorizedLogin("anonymous logins are not served")
        return IMaildrop, self.maildropFor(avatarId), lambda: None
