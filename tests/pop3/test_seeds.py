"""
The sessions of the documents popsrv started from, replayed against it with
the stored messages they imply: qpopper's 1997 session (LAST, RETR, DELE,
"rset 4", RSET), a simple delete-everything session, the RFC 1939 examples,
and the ways Foxmail and Outlook Express sequence RETR and DELE.
"""

from __future__ import annotations

import pytest

from popsrv.app.demo import QPOPPER_1997
from popsrv.store.memory import MemoryMaildrop, MemoryRealm
from tests.support.session import Session, makePortal


def sized(number: int, size: int) -> bytes:
    """
    A message of exactly C{size} octets on the wire.
    """
    head = b"Subject: message %d\r\n\r\n" % number
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


def serve(user: str, password: str, messages: list[bytes]):
    """
    A portal for one user with a memory maildrop of messages; return the
    portal and the maildrop.
    """
    maildrop = MemoryMaildrop(user, messages)
    portal, _ = makePortal({user: password}, realm=MemoryRealm({user: maildrop}))
    return portal, maildrop


def replay(session: Session, transcript: list[tuple[str, str]]) -> None:
    """
    Send each client line and check the server's reply: a reply written in
    full must match exactly, one written as "+OK"/"-ERR" alone only in its
    status; a multi-line reply is given with its lines joined by newlines.
    """
    for line, expected in transcript:
        out = session.send(line).decode("latin-1")
        if expected in ("+OK", "-ERR"):
            assert out.split(" ")[0].rstrip("\r\n") == expected, (line, out)
        else:
            assert out == expected.replace("\n", "\r\n") + "\r\n", (line, out)


@pytest.fixture
def qpopperSession():
    """
    paul's maildrop of 1997: six messages of the sizes qpopper listed, the
    first four already read (qpopper's "Status: RO"), the fourth the message
    the session retrieved.
    """
    sizes = [1447, 2640, 2296, 1100, 3025, 2068]
    messages = [sized(n, size) for n, size in enumerate(sizes, 1)]
    messages[3] = QPOPPER_1997
    maildrop = MemoryMaildrop("paul", messages)
    maildrop.seenUids.update(list(maildrop.messages)[:4])
    realm = MemoryRealm({"paul": maildrop})
    portal, _ = makePortal({"paul": "Kukuru23432"}, realm=realm)
    return Session(portal), maildrop


LISTING = "+OK 6 messages (12576 octets)\n1 1447\n2 2640\n3 2296\n4 1100\n5 3025\n6 2068\n."


def test_qpopper1997(qpopperSession):
    """
    The qpopper session of seed 000, line by line.
    """
    session, maildrop = qpopperSession
    assert session.greeting.startswith(b"+OK popsrv ready <")
    replay(session, [
        ("user paul", "+OK"),
        ("pass Kukuru23432", "+OK paul has 6 messages (12576 octets)"),
        ("stat", "+OK 6 12576"),
        ("list", LISTING),
        ("noop", "+OK"),
        ("last", "+OK 4 is the last read message."),
    ])
    out = session.send("retr 4")
    assert out == b"+OK 1100 octets\r\n" + QPOPPER_1997.replace(b"\n", b"\r\n") + b".\r\n"
    replay(session, [
        ("dele 4", "+OK"),
        ("rset 4", "-ERR Too many arguments for the rset command."),
        ("rset", "+OK maildrop has 6 messages (12576 octets)"),
        ("list", LISTING),
        ("quit", "+OK popsrv signing off (6 messages left)"),
    ])
    assert session.closed
    assert len(maildrop.messages) == 6


def test_deleteEverything():
    """
    The session of seed 004: three messages deleted, a fourth that does not
    exist refused, QUIT.
    """
    sizes = [46394, 20377, 27074]
    portal, maildrop = serve("ne_skagu", "******", [sized(n, s) for n, s in enumerate(sizes, 1)])
    session = Session(portal)
    replay(session, [
        ("user ne_skagu", "+OK"),
        ("pass ******", "+OK"),
        ("stat", "+OK 3 93845"),
        ("list", "+OK 3 messages (93845 octets)\n1 46394\n2 20377\n3 27074\n."),
        ("dele 1", "+OK"),
        ("dele 2", "+OK"),
        ("dele 3", "+OK"),
        ("dele 4", "-ERR no such message, only 3 messages in maildrop"),
        ("quit", "+OK popsrv signing off (maildrop empty)"),
    ])
    assert maildrop.messages == {}


@pytest.fixture
def rfcSession():
    """
    The RFC 1939 examples of seed 001: kcope with two messages of 120 and 200
    octets.
    """
    portal, maildrop = serve("kcope", "secret", [sized(1, 120), sized(2, 200)])
    return Session(portal), maildrop


def test_rfcExamples(rfcSession):
    """
    The RFC 1939 example exchanges quoted in seed 001.
    """
    session, maildrop = rfcSession
    replay(session, [
        ("USER kcope", "+OK"),
        ("PASS secret", "+OK kcope has 2 messages (320 octets)"),
        ("STAT", "+OK 2 320"),
        ("LIST", "+OK 2 messages (320 octets)\n1 120\n2 200\n."),
        ("LIST 2", "+OK 2 200"),
        ("LIST 3", "-ERR no such message, only 2 messages in maildrop"),
        ("NOOP", "+OK"),
        ("TOP 100 10", "-ERR no such message, only 2 messages in maildrop"),
        ("DELE 1", "+OK message 1 deleted"),
        ("DELE 1", "-ERR message 1 already deleted"),
        ("RSET", "+OK maildrop has 2 messages (320 octets)"),
        ("DELE 1", "+OK"),
        ("QUIT", "+OK popsrv signing off (1 message left)"),
    ])
    assert len(maildrop.messages) == 1


@pytest.mark.parametrize(
    "commands",
    [
        # Foxmail: retrieve and delete one by one.
        ["retr 1", "dele 1", "retr 2", "dele 2", "retr 3", "dele 3"],
        # Outlook Express: retrieve everything, then delete everything.
        ["retr 1", "retr 2", "retr 3", "dele 1", "dele 2", "dele 3"],
    ],
    ids=["foxmail", "outlook-express"],
)
def test_clientSequences(commands):
    """
    Both clients' sequences of seed 003 retrieve every message and leave the
    maildrop empty.
    """
    messages = [sized(n, 500 + n) for n in (1, 2, 3)]
    portal, maildrop = serve("user", "password", messages)
    session = Session(portal)
    session.login("user", "password")
    retrieved = []
    for command in commands:
        out = session.send(command)
        assert out.startswith(b"+OK"), (command, out)
        if command.startswith("retr"):
            retrieved.append(out.split(b"\r\n", 1)[1][: -len(b".\r\n")])
    assert retrieved == messages
    assert session.send("quit") == b"+OK popsrv signing off (maildrop empty)\r\n"
    assert maildrop.messages == {}


def test_remoteManagement():
    """
    Seed 003's remote management: delete 1, retrieve 2 and keep it, leave 3.
    """
    messages = [sized(n, 300) for n in (1, 2, 3)]
    portal, maildrop = serve("user", "password", messages)
    session = Session(portal)
    session.login("user", "password")
    assert session.send("dele 1").startswith(b"+OK")
    assert session.send("retr 2").startswith(b"+OK 300 octets")
    assert session.send("quit") == b"+OK popsrv signing off (2 messages left)\r\n"
    assert list(maildrop.messages.values()) == messages[1:]


def test_telnetCleanup():
    """
    Seed 003's telnet session: list, delete 3 and 5, quit.
    """
    messages = [sized(n, 200 + n) for n in range(1, 6)]
    portal, maildrop = serve("user", "password", messages)
    session = Session(portal)
    replay(session, [
        ("user user", "+OK"),
        ("pass password", "+OK"),
        ("list", "+OK 5 messages (1015 octets)\n1 201\n2 202\n3 203\n4 204\n5 205\n."),
        ("dele 3", "+OK"),
        ("dele 5", "+OK"),
        ("quit", "+OK popsrv signing off (3 messages left)"),
    ])
    assert list(maildrop.messages.values()) == [messages[0], messages[1], messages[3]]


def test_dropAfterTenOfFifteen():
    """
    Seed 003's question 9: a line drop after ten of fifteen messages were
    retrieved and deleted leaves all fifteen for the next session.
    """
    portal, maildrop = serve("user", "password", [sized(n, 100 + n) for n in range(1, 16)])
    session = Session(portal)
    session.login("user", "password")
    for n in range(1, 11):
        assert session.send(f"retr {n}").startswith(b"+OK")
        assert session.send(f"dele {n}").startswith(b"+OK")
    session.lose()
    again = Session(portal)
    assert again.login("user", "password").startswith(b"+OK user has 15 messages")


def test_sessionIsLocked():
    """
    Seed 003's "session is locked by another session": a second login while
    the first is open is refused with [IN-USE], and works once it is gone.
    """
    portal, maildrop = serve("user", "password", [sized(1, 100)])
    first = Session(portal)
    first.login("user", "password")
    second = Session(portal)
    assert second.login("user", "password").startswith(b"-ERR [IN-USE]")
    first.lose()
    assert second.login("user", "password").startswith(b"+OK")
