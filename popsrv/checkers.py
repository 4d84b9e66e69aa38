"""
Deprecated: moved to L{popsrv.auth.checkers}; this path works until the release after 0.2.0.
"""

from popsrv._deprecation import aliasMoved

aliasMoved(__name__, "popsrv.auth.checkers", ["StoredSecretChecker"])
