"""
Tests of popsrv.testing, used the way its documentation shows.
"""

from __future__ import annotations

import pytest

from popsrv.testing import POP3ClientError, connect, memoryPortal


def test_documentedExample():
    """
    The module docstring's example works as written.
    """
    import popsrv.testing

    example = popsrv.testing.__doc__.split("::", 1)[1]
    code = "\n".join(line[4:] for line in example.splitlines())
    exec(compile(code, "popsrv.testing example", "exec"), {})


def test_clientDrivesTheRealProtocol():
    """
    The in-memory client logs in, lists, retrieves, deletes and quits
    through the real protocol; errors raise POP3ClientError.
    """
    portal, realm = memoryPortal({"alice": "secret"})
    maildrop = realm.maildrop("alice")
    maildrop.add(b"Subject: 1\n\n.dot\n")
    maildrop.add(b"Subject: 2\n\nbody")
    client = connect(portal)
    assert client.greeting.startswith("+OK popsrv ready <")
    with pytest.raises(POP3ClientError, match=r"\[AUTH\]"):
        client.login("alice", "wrong")
    assert client.login("alice", "secret") == "+OK alice has 2 messages (40 octets)"
    assert client.multiline("LIST") == [b"1 20", b"2 20"]
    assert client.retrieve(1) == b"Subject: 1\r\n\r\n.dot\r\n"
    assert client.multiline("TOP 2 0") == [b"Subject: 2", b""]
    client.command("DELE 1")
    assert client.quit() == "+OK popsrv signing off (1 message left)"
    assert not client.connected
    assert len(maildrop.messages) == 1


def test_timeoutWithTheFakeClock():
    """
    Advancing the client's clock past the timeout closes the session.
    """
    portal, realm = memoryPortal({"alice": "secret"})
    client = connect(portal)
    client.login("alice", "secret")
    client.clock.advance(601)
    assert not client.connected
    assert not realm.maildrop("alice").locked


def test_disconnectReleases():
    """
    A client that disconnects without QUIT leaves the maildrop unlocked and
    intact.
    """
    portal, realm = memoryPortal({"alice": "secret"})
    realm.maildrop("alice").add(b"x\n")
    client = connect(portal)
    client.login("alice", "secret")
    client.command("DELE 1")
    client.disconnect()
    assert realm.maildrop("alice").messages and not realm.maildrop("alice").locked


def test_largeMessageThroughPullProducer():
    """
    A multi-megabyte message arrives whole through the in-memory transport.
    """
    portal, realm = memoryPortal({"alice": "secret"})
    body = b"".join(b"%07d ........\n" % i for i in range(200000))
    realm.maildrop("alice").add(body)
    client = connect(portal)
    client.login("alice", "secret")
    assert client.retrieve(1) == body.replace(b"\n", b"\r\n")


def test_clientWaitsThroughFailureDelay():
    """
    A failed login is answered after the server's delay, which the client
    waits for on the fake clock.
    """
    portal, _ = memoryPortal({"alice": "secret"})
    client = connect(portal)
    started = client.clock.seconds()
    with pytest.raises(POP3ClientError, match=r"\[AUTH\]"):
        client.login("alice", "wrong")
    assert client.clock.seconds() - started >= 1.0
    assert client.connected


def test_factoryMustUseAFakeClock():
    """
    connect() refuses a factory on a real reactor, whose timers it cannot
    drive.
    """
    from twisted.internet import reactor

    from popsrv.pop3 import POP3Factory

    portal, _ = memoryPortal({})
    with pytest.raises(TypeError, match="Clock"):
        connect(factory=POP3Factory(portal, clock=reactor))
