"""
The production store: a user's maildrop is a Maildir on disk.

L{MaildirMaildrop} is the maildrop; L{listing} keeps parsed C{cur/}
listings between sessions; L{delivery} writes messages the way a delivery
agent does.
"""

from popsrv.store.maildir.delivery import deliver, hasMessages
from popsrv.store.maildir.listing import uidFor
from popsrv.store.maildir.maildrop import LOCK_FILE, MaildirMaildrop

__all__ = ["LOCK_FILE", "MaildirMaildrop", "deliver", "hasMessages", "uidFor"]

from popsrv._deprecation import aliasMoved  # noqa: E402

aliasMoved(__name__, "popsrv.threads", ["threadRunner"])
