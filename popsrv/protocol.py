"""
Deprecated: moved to L{popsrv.pop3}; this path works until the release after 0.2.0.
"""

from popsrv._deprecation import aliasMoved

aliasMoved(__name__, "popsrv.pop3", ["POP3Factory", "POP3Protocol", "State"])
