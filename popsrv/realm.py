"""
The realm: from an authenticated user to that user's maildrop.

A login name becomes a directory name only after L{mailboxName} has checked
that it is one safe path component, so no name (C{..}, C{a/b}, a NUL, a
control character, a leading dot) can reach a file outside the maildir root.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from zope.interface import implementer

from popsrv.interfaces import IMaildrop
from popsrv.store.maildir import MaildirMaildrop

__all__ = ["MaildirRealm", "UnsafeMailboxName", "mailboxName"]

MAX_NAME_OCTETS = 255


class UnsafeMailboxName(UnauthorizedLogin):
    """
    A login name that cannot name a maildrop directory; the login fails.
    """


def mailboxName(avatarId: Union[bytes, str]) -> str:
    """
    Return the avatar id as a directory name, or raise L{UnsafeMailboxName}.

    A safe name is UTF-8, 1 to 255 octets, has no C{/}, no NUL or other
    control character, and does not start with a dot.
    """
    if isinstance(avatarId, str):
        raw = avatarId.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(avatarId)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeMailboxName("login name is not UTF-8")
    if not 0 < len(raw) <= MAX_NAME_OCTETS:
        raise UnsafeMailboxName("login name is empty or too long")
    if name.startswith(".") or "/" in name or "\\" in name:
        raise UnsafeMailboxName("login name is not a plain file name")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise UnsafeMailboxName("login name has a control character")
    return name


@implementer(IRealm)
class MaildirRealm:
    """
    A realm whose users' maildrops are Maildirs under one root directory:
    user C{alice}'s is C{<root>/alice/}.

    @ivar runner: how the maildrops do their blocking file work (see
        L{MaildirMaildrop}); L{None} runs it inline.
    """

    def __init__(self, root: str, runner: Optional[Callable[..., Any]] = None) -> None:
        self.root = os.path.abspath(root)
        self.runner = runner

    def maildropFor(self, avatarId: Union[bytes, str]) -> MaildirMaildrop:
        """
        Return the maildrop of one user, whose name must be safe.
        """
        name = mailboxName(avatarId)
        return MaildirMaildrop(os.path.join(self.root, name), name, runner=self.runner)

    def requestAvatar(self, avatarId, mind, *interfaces):
        """
        Return C{(IMaildrop, maildrop, logout)} for the user C{avatarId}.
        """
        if IMaildrop not in interfaces:
            raise NotImplementedError("MaildirRealm only provides IMaildrop")
        return IMaildrop, self.maildropFor(avatarId), lambda: None
