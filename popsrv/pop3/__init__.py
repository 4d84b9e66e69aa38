"""
The POP3 protocol: a sans-IO session (L{popsrv.pop3.session}) and its
Twisted glue (L{popsrv.pop3.protocol}, L{popsrv.pop3.factory}).
"""

from popsrv.pop3.protocol import POP3Factory, POP3Protocol, State

__all__ = ["POP3Factory", "POP3Protocol", "State"]
