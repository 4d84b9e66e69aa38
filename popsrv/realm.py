"""
Deprecated: moved to L{popsrv.store.realm}; this path works until the release after 0.2.0.
"""

from popsrv._deprecation import aliasMoved

aliasMoved(__name__, "popsrv.store.realm", [
    "MaildirRealm", "MaildirTemplate", "mailboxName", "canonicalLogin", "splitLogin",
])
