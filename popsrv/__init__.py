"""
popsrv: a POP3 server framework on Twisted.

Run it with C{twistd -n popsrv}.  Embed it with L{POP3Factory} and a
twisted.cred portal whose realm yields L{IMaildrop} avatars (such as
L{MaildirRealm}, L{MboxRealm} or L{MemoryRealm}), served by a L{ListeningService}; test a
backend or an embedding with L{connect} and L{memoryPortal} from
L{popsrv.testing}.

The layers, top to bottom (each imports only those below it):
    - L{popsrv.app}: options, the twistd service, worker processes, the demo;
    - L{popsrv.pop3}: the POP3 session (sans-IO) and its Twisted glue;
    - L{popsrv.auth} and L{popsrv.store}: credentials and maildrops;
    - L{popsrv.wire}: framing and streaming, shared by the protocol and stores;
    - L{popsrv.interfaces}, L{popsrv.errors}, L{popsrv.messages},
      L{popsrv.threads}, L{popsrv.tls}: shared by every layer.
"""

__version__ = "0.2.0"

from popsrv.app import ListeningService, Options, makeService  # noqa: E402
from popsrv.auth.checkers import StoredSecretChecker  # noqa: E402
from popsrv.errors import (  # noqa: E402
    CredentialsUnavailable,
    MaildropError,
    MaildropLocked,
    MaildropUnusable,
    MessageVanished,
)
from popsrv.interfaces import IMaildrop, IScramParameters, ISecretSource  # noqa: E402
from popsrv.messages import MessageInfo, MessageList  # noqa: E402
from popsrv.pop3 import POP3Factory, POP3Protocol, State  # noqa: E402
from popsrv.pop3.policy import LoginPolicy  # noqa: E402
from popsrv.store.maildir import MaildirMaildrop  # noqa: E402
from popsrv.store.mbox import MboxMaildrop  # noqa: E402
from popsrv.store.memory import MemoryMaildrop, MemoryRealm  # noqa: E402
from popsrv.store.realm import MaildirRealm, MaildirTemplate, MboxRealm, PathTemplate  # noqa: E402
from popsrv.testing import POP3TestClient, connect, memoryPortal  # noqa: E402
from popsrv.threads import threadRunner  # noqa: E402
from popsrv.tls import TLSSettings  # noqa: E402

__all__ = [
    "CredentialsUnavailable",
    "IMaildrop",
    "IScramParameters",
    "ISecretSource",
    "ListeningService",
    "LoginPolicy",
    "MaildirMaildrop",
    "MaildirRealm",
    "MaildirTemplate",
    "MaildropError",
    "MaildropLocked",
    "MaildropUnusable",
    "MboxMaildrop",
    "MboxRealm",
    "MemoryMaildrop",
    "MemoryRealm",
    "MessageInfo",
    "MessageList",
    "MessageVanished",
    "Options",
    "POP3Factory",
    "POP3Protocol",
    "POP3TestClient",
    "PathTemplate",
    "State",
    "StoredSecretChecker",
    "TLSSettings",
    "__version__",
    "connect",
    "makeService",
    "memoryPortal",
    "threadRunner",
]
