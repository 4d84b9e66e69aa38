"""
Tests of L{popsrv.pop3.timing}: the per-session record of command
durations, and how a session keeps it and logs it in C{session-end}.
"""

from __future__ import annotations

import json

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import capturedLogs
from zope.interface import implementer

from popsrv.pop3.timing import COMMAND_SECONDS_BUCKETS, OTHER_COMMAND, CommandTimes, bucketName, commandName
from popsrv.store.memory import MemoryRealm
from tests.support.session import Session, makePortal


def sessionEnd(events) -> dict:
    """
    The one session-end event among C{events}.
    """
    (end,) = [e for e in events if e.get("event") == "session-end"]
    return end


def test_commandNames():
    """
    A line counts under its known keyword, upper-cased; anything else is
    "other", so a client cannot invent names.
    """
    assert commandName(b"retr 1") == "RETR"
    assert commandName(b"PASS my secret") == "PASS"
    assert commandName(b"TOP 1 0") == "TOP"
    assert commandName(b"") == OTHER_COMMAND
    assert commandName(b"X" * 400) == OTHER_COMMAND
    assert commandName(b"\xff\x00 junk") == OTHER_COMMAND


def test_bucketNames():
    """
    Buckets are named by their upper bound, as Prometheus writes them.
    """
    assert [bucketName(b) for b in (0.0005, 0.001, 1.0, 10.0, float("inf"))] == ["0.0005", "0.001", "1", "10", "+Inf"]


def test_recordAndSummary():
    """
    Each command has its count, its sum and its non-empty buckets; a
    duration on a bound is in that bound's bucket, a longer one than the
    last bound in +Inf; the summary is plain JSON.
    """
    times = CommandTimes()
    assert times.summary() == {}
    times.record("RETR", 0.001)
    times.record("RETR", 0.002)
    times.record("RETR", 0.0)
    times.record("PASS", 30.0)
    summary = times.summary()
    assert summary == {
        "RETR": {"count": 3, "sum": 0.003, "buckets": {"0.0005": 1, "0.001": 1, "0.0025": 1}},
        "PASS": {"count": 1, "sum": 30.0, "buckets": {"+Inf": 1}},
    }
    assert json.loads(json.dumps(summary)) == summary
    assert COMMAND_SECONDS_BUCKETS == tuple(sorted(COMMAND_SECONDS_BUCKETS))


def test_noRecordUnlessAsked():
    """
    By default sessions time nothing, and session-end has no commands.
    """
    portal, _ = makePortal()
    session = Session(portal)
    with capturedLogs() as events:
        session.login()
        session.send("QUIT")
        session.lose()
    assert "commands" not in sessionEnd(events)


def test_sessionEndCarriesTheCommandTimes():
    """
    With timeCommands, every command of the session is counted by name,
    with the time from its line to its reply on the factory's clock: a
    login that waits for its checker takes as long as the checker.
    """
    pending: list[defer.Deferred] = []

    @implementer(ICredentialsChecker)
    class Slow:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials):
            pending.append(defer.Deferred())
            return pending[-1]

    realm = MemoryRealm()
    realm.maildrop("alice").add(b"Subject: x\r\n\r\nhello\r\n")
    session = Session(Portal(realm, [Slow()]), timeCommands=True)
    with capturedLogs() as events:
        session.send("USER alice")
        # Pipelined: STAT waits for the login, and is timed from when it is
        # taken, not from when it arrived.
        session.feed(b"PASS secret\r\nSTAT\r\n")
        session.clock.advance(0.3)
        pending[0].callback(b"alice")
        session.pump()
        session.send("RETR 1")
        session.send("BOGUS")
        session.send("QUIT")
        session.lose()
    commands = sessionEnd(events)["commands"]
    assert set(commands) == {"USER", "PASS", "STAT", "RETR", "other", "QUIT"}
    assert commands["PASS"] == {"count": 1, "sum": 0.3, "buckets": {"0.5": 1}}
    for name in ("USER", "STAT", "RETR", "other", "QUIT"):
        assert commands[name] == {"count": 1, "sum": 0.0, "buckets": {"0.0005": 1}}, name
    assert "secret" not in json.dumps(commands)


def test_aFailedLoginIncludesItsPause():
    """
    A failed PASS takes the pause before its answer.
    """
    portal, _ = makePortal()
    session = Session(portal, timeCommands=True, authFailureDelay=1)
    with capturedLogs() as events:
        session.send("USER alice")
        session.send("PASS wrong")
        session.clock.advance(1)
        session.lose()
    assert sessionEnd(events)["commands"]["PASS"] == {"count": 1, "sum": 1.0, "buckets": {"1": 1}}
