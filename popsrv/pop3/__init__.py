"""
The POP3 protocol.

L{session} is the sans-IO state machine (a command line in, an effect
out), with L{commands} (the command table and parsing) and L{replies} (codes
and wording); L{login} runs one login attempt; L{protocol} is the Twisted
glue and L{factory} its settings.
"""

from popsrv.pop3.commands import State
from popsrv.pop3.factory import POP3Factory
from popsrv.pop3.protocol import POP3Protocol
from popsrv.pop3.session import Session

__all__ = ["POP3Factory", "POP3Protocol", "Session", "State"]
