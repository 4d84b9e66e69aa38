"""
Every reply's form: one status line, CRLF-ended, with its response code
from the one enum.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from popsrv.pop3 import replies
from popsrv.pop3.replies import Code

STATUS = re.compile(rb"(\+OK( [^\r\n]*)?|-ERR( \[(AUTH|IN-USE|LOGIN-DELAY|SYS/TEMP|SYS/PERM)\])? [^\r\n]+)\r\n")


def test_everyConstantReplyIsOneStatusLine() -> None:
    """
    The module's ready-made replies are single, well-formed status lines.
    """
    made = [value for name, value in vars(replies).items() if name.isupper() and isinstance(value, bytes)]
    made += [replies.signedOff(0), replies.signedOff(3), replies.loginDelay(60), replies.loggedIn("a", 1, 2),
             replies.messageVanished(4), replies.messageUnreadable(4), replies.lineTooLongToRead()]
    assert len(made) >= 12
    for reply in made:
        assert STATUS.fullmatch(reply), reply


def test_codesAreRFCSpellings() -> None:
    """
    The codes are spelled as RFC 2449 and RFC 3206 register them.
    """
    assert {code.value for code in Code} == {"AUTH", "IN-USE", "LOGIN-DELAY", "SYS/TEMP", "SYS/PERM"}
    assert replies.err("x", Code.IN_USE) == b"-ERR [IN-USE] x\r\n"


@given(st.binary(max_size=200))
def test_quotedClientBytesStayOnOneSafeLine(data: bytes) -> None:
    """
    Whatever a client sent, quoting it in a reply gives one printable line.
    """
    reply = replies.err(replies.unknownCommand(data))
    assert STATUS.fullmatch(reply)
    assert all(0x20 <= octet < 0x7F for octet in reply[:-2])
