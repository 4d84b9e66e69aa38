"""
The structured fields of the log events that operators' tools (and
popsrv's own metrics, L{popsrv.app.metrics}) read: which listener a
connection came through and whether it is TLS, the mechanism of a login
that could not be checked, and one C{storage-error} event, naming the
operation, for every failure of a maildrop.
"""

from __future__ import annotations

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import capturedLogs
from zope.interface import implementer

from popsrv.errors import MaildropError, MaildropUnusable, MessageVanished
from popsrv.interfaces import IWholeMessages
from popsrv.store.memory import MemoryMaildrop, MemoryRealm
from tests.support.session import NoDelayTransport, Session, makePortal

MESSAGE = b"Subject: one\r\n\r\nfirst body\r\n"


def eventsNamed(events, name: str) -> list:
    """
    The events of C{events} whose C{event} is C{name}.
    """
    return [e for e in events if e.get("event") == name]


@implementer(ISSLTransport)
class TLSTransport(NoDelayTransport):
    """
    A string transport that says it is TLS, as an C{ssl:} listener's is.
    """

    def getPeerCertificate(self) -> None:
        return None


@pytest.mark.parametrize("transport, tls", [(NoDelayTransport, False), (TLSTransport, True)])
def test_connectAndSessionEndNameTheListener(transport, tls):
    """
    C{connect} carries the factory's listener and whether the connection
    is TLS from its start; C{session-end} carries the listener too.
    """
    portal, realm = makePortal()
    realm.maildrop("alice").add(MESSAGE)
    with capturedLogs() as events:
        session = Session(portal, transport=transport, listener="127.0.0.1:995")
        session.login()
        session.send("QUIT")
        session.lose()
    (connect,) = eventsNamed(events, "connect")
    assert connect["listener"] == "127.0.0.1:995" and connect["tls"] is tls
    (end,) = eventsNamed(events, "session-end")
    assert end["listener"] == "127.0.0.1:995"


def test_aFactoryWithoutAListenerNameSaysSo():
    """
    An embedding's factory that names no listener logs C{"-"}.
    """
    portal, _ = makePortal()
    with capturedLogs() as events:
        Session(portal)
    (connect,) = eventsNamed(events, "connect")
    assert connect["listener"] == "-" and connect["tls"] is False


def test_forListenerSharesEverythingButTheName():
    """
    A factory made for another listener has the same settings and shares
    the state that must be one for the whole server.
    """
    portal, _ = makePortal()
    first = Session(portal).factory
    second = first.forListener("[::]:110")
    assert second.listener == "[::]:110" and first.listener == "-"
    for name in ("portal", "limits", "penalty", "loginQueue", "policy", "clock", "tls", "timeout", "hostname"):
        assert getattr(second, name) is getattr(first, name), name


def test_authUnavailableNamesTheMechanism():
    """
    Both kinds of C{auth-unavailable}, a backend that says it cannot
    answer and one that breaks, carry the login's mechanism.
    """
    from popsrv.errors import CredentialsUnavailable

    realm = MemoryRealm()
    for error, failure in ((CredentialsUnavailable("database down"), False), (RuntimeError("bug"), True)):

        @implementer(ICredentialsChecker)
        class Failing:
            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials, error=error):
                return defer.fail(error)

        session = Session(Portal(realm, [Failing()]))
        with capturedLogs() as events:
            session.login()
        (event,) = eventsNamed(events, "auth-unavailable")
        assert event["mechanism"] == "USER/PASS"
        assert bool(event.get("log_failure")) is failure
        assert event["why"] in ("database down", "bug")


class BrokenMaildrop(MemoryMaildrop):
    """
    A memory maildrop whose one named operation fails.
    """

    breaks = ""

    def lock(self) -> None:
        if self.breaks == "open":
            raise MaildropUnusable("the Maildir is a symbolic link")
        if self.breaks == "lock":
            raise OSError("no locks available")
        super().lock()

    def listMessages(self):
        if self.breaks == "list":
            raise MaildropError("disk on fire")
        return super().listMessages()

    def sendMessage(self, uid, consumer):
        if self.breaks == "read":
            return defer.fail(MaildropError("unreadable"))
        if self.breaks == "stream":
            consumer.registerProducer(object(), False)
            consumer.write(b"partial\n")
            consumer.unregisterProducer()
            return defer.fail(OSError("I/O error"))
        return super().sendMessage(uid, consumer)

    def commit(self, deleted, seen):
        if self.breaks == "commit":
            raise MaildropError("read-only file system")
        super().commit(deleted, seen)

    def release(self) -> None:
        super().release()
        if self.breaks == "release":
            raise OSError("bad file descriptor")


@pytest.mark.parametrize("operation", ["open", "lock", "list", "read", "stream", "commit", "release"])
def test_everyStorageFailureIsOneStorageErrorEvent(operation):
    """
    Each way a maildrop can fail is logged once as C{storage-error}, with
    the C{operation} that failed, the user and the peer.
    """
    maildrop = BrokenMaildrop("alice", [MESSAGE])
    maildrop.breaks = operation
    portal, _ = makePortal(realm=MemoryRealm({"alice": maildrop}))
    session = Session(portal)
    with capturedLogs() as events:
        session.login()
        session.send("DELE 1" if operation == "commit" else "RETR 1")
        session.send("QUIT")
        session.lose()
    (event,) = eventsNamed(events, "storage-error")
    assert event["operation"] == operation
    assert event["user"] == "alice" and event["peer"] == "127.0.0.1:40000"


@implementer(IWholeMessages)
class BrokenWholeMaildrop(MemoryMaildrop):
    """
    A memory maildrop that hands small messages over whole, or fails to.
    """

    fails: Exception | None = None

    def readWhole(self, uid: str, limit: int) -> bytes | None:
        if self.fails is not None:
            raise self.fails
        body = self.messages[uid]
        return body if len(body) <= limit else None


@pytest.mark.parametrize("failure, logged", [(MaildropError("unreadable"), True), (MessageVanished("x"), False)])
def test_aMessageThatCannotBeReadWholeIsRefused(failure: Exception, logged: bool) -> None:
    """
    A small message that cannot be read whole gets a one-line C{-ERR} (and
    the session goes on); a storage failure is one C{storage-error} event
    with the operation C{read}, a vanished message none.
    """
    maildrop = BrokenWholeMaildrop("alice", [MESSAGE, MESSAGE])
    maildrop.fails = failure
    portal, _ = makePortal(realm=MemoryRealm({"alice": maildrop}))
    session = Session(portal)
    with capturedLogs() as events:
        session.login()
        reply = session.send("RETR 1")
        maildrop.fails = None
        second = session.send("RETR 2")
        session.send("QUIT")
        session.lose()
    assert reply.startswith(b"-ERR") and reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1
    assert second.startswith(b"+OK") and second.endswith(b"first body\r\n.\r\n")
    storageErrors = eventsNamed(events, "storage-error")
    assert [event["operation"] for event in storageErrors] == (["read"] if logged else [])


def test_everyEventOfASessionCarriesItsId():
    """
    Every event of one session (connect, login-failed, login, session-end)
    carries the same session id; another session's differs.
    """
    portal, realm = makePortal()
    with capturedLogs() as events:
        first = Session(portal)
        first.login(password="wrong")
        first.login()
        first.send("QUIT")
        first.lose()
        second = Session(portal)
        second.send("QUIT")
        second.lose()
    sessions = [e["session"] for e in events if e.get("event") == "session-end"]
    assert len(sessions) == 2 and sessions[0] != sessions[1]
    firstEvents = [e for e in events if e.get("session") == sessions[0]]
    assert [e["event"] for e in firstEvents if "event" in e] == ["connect", "login-failed", "login", "session-end"]
    assert all(len(session) >= 12 for session in sessions)
