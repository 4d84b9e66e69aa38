"""
Exceptions that storage backends raise and the protocol turns into replies.
"""

__all__ = ["CredentialsUnavailable", "MaildropError", "MaildropLocked", "MaildropUnusable", "MessageVanished"]


class MaildropError(Exception):
    """
    The maildrop could not do what was asked for a reason the client may
    retry later (the protocol answers C{-ERR [SYS/TEMP]}).
    """


class MaildropLocked(MaildropError):
    """
    Another session holds the maildrop (the protocol answers
    C{-ERR [IN-USE]}).
    """


class MessageVanished(MaildropError):
    """
    A message in the session's snapshot no longer exists in the store
    (something outside POP3 removed it).
    """


class MaildropUnusable(MaildropError):
    """
    The maildrop cannot be used until an administrator repairs it (the
    protocol answers C{-ERR [SYS/PERM]}).
    """


class CredentialsUnavailable(Exception):
    """
    A credential backend cannot check a login now (its database is down or
    too slow); the protocol answers C{-ERR [SYS/TEMP]}, never a wrong
    password.
    """
