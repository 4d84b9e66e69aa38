"""
The realm: from an authenticated user to that user's maildrop.

Where a user's Maildir (or mbox spool) is comes from a L{PathTemplate}
such as C{/var/vmail/%d/%n} (or C{/var/mail/%u}), filled in with parts of
the login name; L{MaildirTemplate} and L{BadMaildirTemplate} are the same
classes under their first names.  The rules for
login names are in L{popsrv.names}, in one place (the passwd tool follows
them too); L{UnsafeMailboxName}, L{canonicalDomain}, L{canonicalLogin},
L{mailboxName} and L{splitLogin} are also importable from here.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Tuple, Type, Union

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from zope.interface import Interface, implementer

from popsrv.interfaces import IMaildrop
from popsrv.names import (
    MAX_NAME_OCTETS,
    UnsafeMailboxName,
    canonicalDomain,
    canonicalLogin,
    checkCharacters,
    checkPlainName,
    mailboxName,
    splitLogin,
)
from popsrv.store.maildir import MaildirMaildrop
from popsrv.store.mbox import MboxMaildrop
from popsrv.store.uidlformat import UidlFormat
from popsrv.threads import Runner

__all__ = [
    "BadMaildirTemplate",
    "BadPathTemplate",
    "MaildirRealm",
    "MaildirTemplate",
    "MboxRealm",
    "PathTemplate",
    "UnsafeMailboxName",
    "canonicalDomain",
    "canonicalLogin",
    "mailboxName",
    "splitLogin",
]

PLACEHOLDERS = ("u", "n", "d")


class BadPathTemplate(ValueError):
    """
    A template that cannot be used: an unknown C{%} placeholder, no
    placeholder naming the user, or a C{.} or C{..} component.
    """


BadMaildirTemplate = BadPathTemplate


class PathTemplate:
    """
    Where each user's Maildir (or mbox spool, for a template of that
    C{kind}) is: a path with placeholders filled in from
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
    @ivar kind: what the paths name, for messages: C{"Maildir"} or
        C{"mbox"}.
    """

    def __init__(self, text: str, kind: str = "Maildir") -> None:
        self.text = text
        self.kind = kind
        pieces = _parseTemplate(text, kind)
        self.uses = frozenset(piece for piece, isCode in pieces if isCode)
        if not self.uses & {"u", "n"}:
            raise BadPathTemplate(
                f"{kind} template {text!r} needs %u or %n, so that users get their own {_noun(kind)}s"
            )
        prefix = "" if pieces[0][1] else pieces.pop(0)[0]
        cut = prefix.rfind("/") + 1
        self.base = os.path.abspath(prefix[:cut] or ".")
        if prefix[cut:]:
            pieces.insert(0, (prefix[cut:], False))
        self._pieces = pieces
        _checkSeparated(text, pieces, kind)
        shape = "".join("\0" if isCode else piece for piece, isCode in pieces)
        if any(component in (".", "..") for component in shape.split("/")):
            raise BadPathTemplate(f"{kind} template {text!r} has a . or .. after its first placeholder")

    @classmethod
    def forRoot(cls, root: str, kind: str = "Maildir") -> PathTemplate:
        """
        The template of one Maildir (or spool) per login under C{root}:
        C{root/%u}.
        """
        return cls(os.path.join(root.replace("%", "%%"), "%u"), kind)

    def expand(self, login: str) -> str:
        """
        Return the Maildir (or spool) path of a login name, or raise
        L{UnsafeMailboxName} if its domain is not a domain name, or a part
        of the login the template uses is not a safe path component (or is
        missing, as C{%d} without a domain).
        """
        # The characters of every part once: the domain's as given in
        # splitLogin, the local part's here (the login as given is the two).
        local, domain = splitLogin(login)
        checkCharacters(local, "local part of the login name" if "@" in login else "login name")
        values = {"u": login, "n": local, "d": domain}
        names = {"u": "login name", "n": "local part of the login name", "d": "domain of the login name"}
        if "d" in self.uses and not domain:
            raise UnsafeMailboxName(f"login name has no @domain, which %d in the {self.kind} template needs")
        for code in self.uses:
            checkPlainName(values[code], names[code])
        relative = "".join(values[piece] if isCode else piece for piece, isCode in self._pieces)
        for component in relative.split("/"):
            if len(component.encode("utf-8")) > MAX_NAME_OCTETS:
                raise UnsafeMailboxName("login name makes a directory name that is too long")
        return os.path.join(self.base, relative)


MaildirTemplate = PathTemplate


def _noun(kind: str) -> str:
    """
    What one path of a template of C{kind} names, in a message.
    """
    return "Maildir" if kind == "Maildir" else f"{kind} spool"


def _checkSeparated(text: str, pieces: List[Tuple[str, bool]], kind: str) -> None:
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
            raise BadPathTemplate(
                f"{kind} template {text!r} has %{previous} and %{piece} without a / between them, "
                f"so two logins could share a {_noun(kind)}"
            )
        previous, between = piece, ""


def _parseTemplate(text: str, kind: str) -> List[Tuple[str, bool]]:
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
            raise BadPathTemplate(
                f"{kind} template {text!r} has {shown}: use %u (login), %n (local part), "
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
    L{PathTemplate} puts them.

    @ivar template: the L{PathTemplate}.
    @ivar root: the directory every Maildir is below (the template's
        L{PathTemplate.base}).
    @ivar runner: how the maildrops do their blocking file work (see
        L{MaildirMaildrop}); C{None} runs it inline.
    @ivar uidlFormat: the C{pop3_uidl_format} of the Dovecot the Maildirs
        may come from, or C{None} for Dovecot's default (see
        L{popsrv.store.maildir.migrated}).
    """

    def __init__(
        self,
        root: Optional[str] = None,
        runner: Optional[Runner] = None,
        template: Union[PathTemplate, str, None] = None,
        uidlFormat: Optional[UidlFormat] = None,
    ) -> None:
        if (root is None) == (template is None):
            raise TypeError("MaildirRealm takes either a root directory or a template")
        if root is not None:
            template = PathTemplate.forRoot(root)
        elif isinstance(template, str):
            template = PathTemplate(template)
        assert template is not None
        self.template = template
        self.root = template.base
        self.runner = runner
        self.uidlFormat = uidlFormat

    def maildropFor(self, avatarId: Union[bytes, str]) -> MaildirMaildrop:
        """
        Return the maildrop of one user, whose name must be safe; it is named
        by the login with its domain in canonical form (L{canonicalLogin}).
        """
        login = mailboxName(avatarId)
        path = self.template.expand(login)
        return MaildirMaildrop(
            path, canonicalLogin(login), runner=self.runner, trusted=self.template.base, uidlFormat=self.uidlFormat,
        )

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



@implementer(IRealm)
class MboxRealm:
    """
    A realm whose users' maildrops are classic Unix mbox spools, wherever a
    L{PathTemplate} puts them (C{/var/mail/%u}).

    @ivar template: the L{PathTemplate} (of kind C{"mbox"}).
    @ivar stateDirectory: popsrv's own directory for what it keeps about
        the spools (session locks, journals, seen marks).
    @ivar runner: how the maildrops do their blocking file work (see
        L{MboxMaildrop}); C{None} runs it inline.
    """

    def __init__(
        self, template: Union[PathTemplate, str], stateDirectory: str, runner: Optional[Runner] = None,
    ) -> None:
        self.template = PathTemplate(template, "mbox") if isinstance(template, str) else template
        self.stateDirectory = stateDirectory
        self.runner = runner

    def maildropFor(self, avatarId: Union[bytes, str]) -> MboxMaildrop:
        """
        Return the maildrop of one user, whose name must be safe; it is named
        by the login with its domain in canonical form (L{canonicalLogin}).
        """
        login = mailboxName(avatarId)
        path = self.template.expand(login)
        return MboxMaildrop(
            path, canonicalLogin(login), self.stateDirectory, runner=self.runner, trusted=self.template.base
        )

    def requestAvatar(
        self, avatarId: Union[bytes, str, Tuple[()]], mind: object, *interfaces: Type[Interface]
    ) -> Tuple[Type[Interface], IMaildrop, Callable[[], None]]:
        """
        Return C{(IMaildrop, maildrop, logout)} for the user C{avatarId}.
        """
        if IMaildrop not in interfaces:
            raise NotImplementedError("MboxRealm only provides IMaildrop")
        if not isinstance(avatarId, (bytes, str)):
            raise UnauthorizedLogin("anonymous logins are not served")
        return IMaildrop, self.maildropFor(avatarId), lambda: None
