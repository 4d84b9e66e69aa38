"""
The classic Unix mbox store: each user's maildrop is a spool file, such as
C{/var/mail/alice}, that delivery agents append to.

L{MboxMaildrop} is the maildrop; the modules, one job each:
    - L{parsing} splits a spool into messages (and L{unquoting},
      L{headers} and L{uids} read them);
    - L{spool} opens a spool safely, L{locking} locks it as delivery agents
      do, L{state} keeps popsrv's own files about it (session lock, seen
      marks);
    - L{journal} removes messages crash-safely, L{snapshot} finds a
      session's messages in a spool another program may have changed,
      L{index} keeps scans for the next login;
    - L{opened} is one session's blocking work, L{maildrop} the
      L{popsrv.interfaces.IMaildrop} around it;
    - L{delivery} appends a message as a delivery agent does.
"""

from popsrv.store.mbox.delivery import deliver
from popsrv.store.mbox.maildrop import MboxMaildrop

__all__ = ["MboxMaildrop", "deliver"]
