"""
An example credential backend for popsrv: users and their password hashes
in a JSON file, read at every login, such as

    {"alice@example.com": "pbkdf2_sha256$600000$SALT$HASH"}

Make a hash with ``python -m popsrv_example_checker``.
"""

import base64
import hashlib
import hmac
import json
import os

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.threads import deferToThread
from zope.interface import implementer

ITERATIONS = 600_000


def hashPassword(password: str, iterations: int = ITERATIONS) -> str:
    """
    Return the stored form of a password: pbkdf2_sha256$ITERATIONS$SALT$HASH.
    """
    salt = base64.b64encode(os.urandom(12)).decode("ascii")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("ascii"), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode('ascii')}"


def verifyPassword(password: bytes, stored: str) -> bool:
    """
    Whether a password matches its stored form.
    """
    try:
        scheme, iterations, salt, expected = stored.split("$")
        rounds = int(iterations)
    except ValueError:
        return False  # not a stored form at all: no password matches it
    if scheme != "pbkdf2_sha256":
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password, salt.encode("ascii"), rounds)
    return hmac.compare_digest(base64.b64encode(digest).decode("ascii"), expected)


@implementer(ICredentialsChecker)
class JSONPasswordChecker:
    """
    Checks logins that carry the password (USER/PASS, PLAIN, LOGIN) against
    the JSON file at C{path}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path: str) -> None:
        self.path = path
        self._users()  # a missing or broken file stops the server at startup

    def _users(self) -> dict:
        with open(self.path, encoding="utf-8") as f:
            users = json.load(f)
        if not isinstance(users, dict):
            raise ValueError(f"{self.path} is not a JSON object of users")
        return users

    def requestAvatarId(self, credentials):
        """
        Return a Deferred that fires with the login name, or fails with
        UnauthorizedLogin.  PBKDF2 is slow on purpose, so it runs in a thread.
        """
        return deferToThread(self._check, credentials.username, credentials.password)

    def _check(self, username: bytes, password: bytes) -> bytes:
        stored = self._users().get(username.decode("utf-8"))
        if stored is None or not verifyPassword(password, stored):
            raise UnauthorizedLogin("invalid user name or password")
        return username


if __name__ == "__main__":
    from getpass import getpass

    print(hashPassword(getpass("Password: ")))
