"""
Makes ``--auth example:USERS.json`` available to twistd popsrv.
"""

from popsrv_example_checker import JSONPasswordChecker
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICheckerFactory, IPlugin)
class ExampleCheckerFactory:
    """
    Makes a JSONPasswordChecker of the file named after ``example:``.
    """

    authType = "example"
    authHelp = "Users and PBKDF2 password hashes in a JSON file (make them with python -m popsrv_example_checker)."
    argStringFormat = "The path of the JSON file."
    credentialInterfaces = JSONPasswordChecker.credentialInterfaces

    def generateChecker(self, argstring):
        """
        Return the checker of the JSON file at C{argstring}.
        """
        return JSONPasswordChecker(argstring)


exampleChecker = ExampleCheckerFactory()
