"""
Every implementation popsrv ships provides its interfaces in full, as
zope.interface's verifyObject checks them.
"""

from __future__ import annotations

from pathlib import Path

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.portal import IRealm
from twisted.internet.interfaces import IPullProducer
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from popsrv.auth.checkers import StoredSecretChecker
from popsrv.auth.credentials import APOPCredentials, CramMD5Credentials
from popsrv.auth.passwdfile import PasswdFile
from popsrv.auth.scram import ScramCredentials
from popsrv.interfaces import (
    IKnownSchemes,
    ILoginMethods,
    IMaildrop,
    IScramCredentials,
    IScramParameters,
    ISecretSource,
    IWholeMessages,
)
from popsrv.store.maildir import MaildirMaildrop
from popsrv.store.mbox import MboxMaildrop
from popsrv.store.memory import MemoryMaildrop, MemoryRealm
from popsrv.store.realm import MaildirRealm, MboxRealm
from popsrv.wire.streaming import FileProducer


def test_maildrops(tmp_path: Path) -> None:
    """The memory, Maildir and mbox maildrops provide IMaildrop."""
    assert verifyObject(IMaildrop, MemoryMaildrop("alice", [b"Subject: x\r\n\r\n"]))
    assert verifyObject(IMaildrop, MaildirMaildrop(str(tmp_path), "alice"))
    assert verifyObject(IWholeMessages, MaildirMaildrop(str(tmp_path), "alice"))
    assert verifyObject(IMaildrop, MboxMaildrop(str(tmp_path / "alice"), "alice", str(tmp_path / "state")))


def test_realms(tmp_path: Path) -> None:
    """The memory, Maildir and mbox realms provide IRealm."""
    assert verifyObject(IRealm, MemoryRealm())
    assert verifyObject(IRealm, MaildirRealm(root=str(tmp_path)))
    assert verifyObject(IRealm, MboxRealm(str(tmp_path / "%u"), str(tmp_path / "state")))


def test_secretSourceAndChecker(tmp_path: Path) -> None:
    """
    The passwd file is a secret source; the checker over any source checks
    credentials and looks up SCRAM parameters.
    """
    path = tmp_path / "passwd"
    path.write_text("alice:{PLAIN}secret\n")
    source = PasswdFile(str(path))
    assert verifyObject(ISecretSource, source)
    assert verifyObject(IKnownSchemes, source)
    checker = StoredSecretChecker(source, runner=lambda function, *args: function(*args))
    assert verifyObject(ICredentialsChecker, checker)
    assert verifyObject(IScramParameters, checker)
    assert verifyObject(ILoginMethods, checker)


def test_pgsqlSourceProvidesISecretSource() -> None:
    """The PostgreSQL source is a secret source (it connects only when started)."""
    from twisted.internet.task import Clock

    from popsrv.auth.pgsql import PostgresSecretSource, PostgresSettings

    settings = PostgresSettings(conninfo="host=127.0.0.1", query="SELECT secret FROM users WHERE name = %(user)s")
    assert verifyObject(ISecretSource, PostgresSecretSource(settings, Clock()))


def test_credentials() -> None:
    """APOP, CRAM-MD5 and SCRAM credentials provide what checkers ask of them."""
    assert verifyObject(IUsernameHashedPassword, APOPCredentials(b"<1.2@h>", b"alice", b"0" * 32))
    assert verifyObject(IUsernameHashedPassword, CramMD5Credentials(b"<1.2@h>", b"alice", b"0" * 32))
    scram = ScramCredentials("SCRAM-SHA-256", b"alice", "n,,n=alice,r=x", "r=xy,s=c2FsdA==,i=4096",
                             "c=biws,r=xy,p=cHJvb2Y=", b"salt", 4096, "y")
    assert verifyObject(IUsernameHashedPassword, scram)
    assert verifyObject(IScramCredentials, scram)


def test_fileProducer(tmp_path: Path) -> None:
    """The file producer stores use is a pull producer."""
    path = tmp_path / "message"
    path.write_bytes(b"x")
    with open(path, "rb") as f:
        producer = FileProducer(f, StringTransport())
        assert verifyObject(IPullProducer, producer)
