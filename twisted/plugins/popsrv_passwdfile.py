"""
Makes C{--auth passwd-file:PATH} available to C{twistd popsrv} (and to any
other strcred user); popsrv's checker modules are imported only when such a
checker is made, not when twistd lists its plugins.
"""

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICheckerFactory, IPlugin)
class PasswdFileCheckerFactory:
    """
    Makes a L{popsrv.auth.checkers.StoredSecretChecker} over a passwd file.
    """

    authType = "passwd-file"
    authHelp = """
A passwd file in Dovecot's format: lines user:{SCHEME}secret (further
:-separated fields, # comments and blank lines are ignored). Schemes:
ARGON2ID, ARGON2I, BLF-CRYPT, SHA512-CRYPT, SHA256-CRYPT, SCRAM-SHA-256,
SCRAM-SHA-1 and PLAIN (the only one that allows APOP and CRAM-MD5).
The file is read again when it changes; manage it with
'python -m popsrv passwd add|set|del|list FILE [USER]'.
"""
    argStringFormat = "PATH"
    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def generateChecker(self, argstring: str):
        """
        Read the passwd file at C{argstring} and return its checker.
        """
        from popsrv.auth.checkers import StoredSecretChecker
        from popsrv.auth.passwdfile import PasswdFile

        return StoredSecretChecker(PasswdFile(argstring))


passwdFile = PasswdFileCheckerFactory()
