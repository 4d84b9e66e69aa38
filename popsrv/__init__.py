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

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from popsrv.app import ListeningService, Options, makeService
    from popsrv.auth.checkers import StoredSecretChecker
    from popsrv.errors import (
        CredentialsUnavailable,
        MaildropError,
        MaildropLocked,
        MaildropUnusable,
        MessageVanished,
    )
    from popsrv.interfaces import IMaildrop, IScramParameters, ISecretSource, IWholeMessages
    from popsrv.messages import MessageInfo, MessageList
    from popsrv.pop3 import POP3Factory, POP3Protocol, State
    from popsrv.pop3.policy import LoginPolicy
    from popsrv.store.maildir import MaildirMaildrop
    from popsrv.store.mbox import MboxMaildrop
    from popsrv.store.memory import MemoryMaildrop, MemoryRealm
    from popsrv.store.realm import MaildirRealm, MaildirTemplate, MboxRealm, PathTemplate
    from popsrv.testing import POP3TestClient, connect, memoryPortal
    from popsrv.threads import threadRunner
    from popsrv.tls import TLSSettings

# Where each public name lives: imported on first use (PEP 562), so that a
# process imports only what it uses (a server never loads popsrv.testing,
# and with it twisted.trial).
_LAZY = {
    "CredentialsUnavailable": "popsrv.errors",
    "MaildropError": "popsrv.errors",
    "MaildropLocked": "popsrv.errors",
    "MaildropUnusable": "popsrv.errors",
    "MessageVanished": "popsrv.errors",
    "IMaildrop": "popsrv.interfaces",
    "IScramParameters": "popsrv.interfaces",
    "ISecretSource": "popsrv.interfaces",
    "IWholeMessages": "popsrv.interfaces",
    "ListeningService": "popsrv.app",
    "LoginPolicy": "popsrv.pop3.policy",
    "MaildirMaildrop": "popsrv.store.maildir",
    "MaildirRealm": "popsrv.store.realm",
    "MaildirTemplate": "popsrv.store.realm",
    "MboxMaildrop": "popsrv.store.mbox",
    "MboxRealm": "popsrv.store.realm",
    "MemoryMaildrop": "popsrv.store.memory",
    "MemoryRealm": "popsrv.store.memory",
    "MessageInfo": "popsrv.messages",
    "MessageList": "popsrv.messages",
    "Options": "popsrv.app",
    "POP3Factory": "popsrv.pop3",
    "POP3Protocol": "popsrv.pop3",
    "POP3TestClient": "popsrv.testing",
    "PathTemplate": "popsrv.store.realm",
    "State": "popsrv.pop3",
    "StoredSecretChecker": "popsrv.auth.checkers",
    "TLSSettings": "popsrv.tls",
    "connect": "popsrv.testing",
    "makeService": "popsrv.app",
    "memoryPortal": "popsrv.testing",
    "threadRunner": "popsrv.threads",
}


def __getattr__(name: str) -> Any:
    """
    Import a public name from its module on first use.
    """
    module = _LAZY.get(name)
    if module is None:
        # A subpackage or module (popsrv.pop3 after a bare "import popsrv").
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'popsrv' has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "CredentialsUnavailable",
    "IMaildrop",
    "IScramParameters",
    "ISecretSource",
    "IWholeMessages",
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
