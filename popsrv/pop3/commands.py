"""
The POP3 command table and strict parsing of a command line.

A line becomes a L{Command}: its upper-cased keyword and its arguments,
checked against the table for the session's state and the argument count,
or a L{CommandError} with the reply's wording.  Nothing here keeps state.
"""

from __future__ import annotations

from enum import Enum
from typing import Dict, Optional, Tuple

import attr

from popsrv.pop3 import replies

__all__ = [
    "COMMANDS",
    "MAX_AUTH_OCTETS",
    "MAX_COMMAND_OCTETS",
    "Command",
    "CommandError",
    "State",
    "Syntax",
    "parse",
]

# RFC 2449: a command line is at most 255 octets; popsrv allows 512, and AUTH
# lines (with a SASL initial response) 16 KiB.
MAX_COMMAND_OCTETS = 512
MAX_AUTH_OCTETS = 16384


class State(Enum):
    """
    The life cycle of a POP3 session (RFC 1939, section 3), as one enum.

    GREETING until the greeting is sent, then AUTHORIZATION until a login
    succeeds, TRANSACTION until QUIT, UPDATE while QUIT applies the
    deletions, CLOSED at the end (from any state, when the connection goes).
    """

    GREETING = "GREETING"
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class CommandError(Exception):
    """
    A command the session refuses: the text of its C{-ERR} reply, with an
    optional response code.

    @ivar malformed: the line was not a valid command here (unknown, of the
        other state, wrong arguments, too long), as opposed to a valid
        command that cannot be done (no such message): only malformed
        lines count towards closing a session.
    """

    def __init__(self, text: str, code: Optional[replies.Code] = None, malformed: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.malformed = malformed

    def reply(self) -> bytes:
        """
        The C{-ERR} line to send.
        """
        return replies.err(self.text, self.code)


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Syntax:
    """
    How a command is called: the state it belongs to (C{None}: any state
    before UPDATE) and how many space-separated arguments it takes.

    @ivar restOfLine: the argument is the whole rest of the line, spaces
        included (PASS: passwords may contain spaces).
    """

    state: Optional[State]
    minArgs: int
    maxArgs: int
    restOfLine: bool = False


_AUTH = State.AUTHORIZATION
_TRANS = State.TRANSACTION
COMMANDS: Dict[bytes, Syntax] = {
    b"USER": Syntax(_AUTH, 1, 1),
    b"PASS": Syntax(_AUTH, 1, 1, restOfLine=True),
    b"APOP": Syntax(_AUTH, 2, 2),
    b"STAT": Syntax(_TRANS, 0, 0),
    b"LIST": Syntax(_TRANS, 0, 1),
    b"UIDL": Syntax(_TRANS, 0, 1),
    b"RETR": Syntax(_TRANS, 1, 1),
    b"TOP": Syntax(_TRANS, 2, 2),
    b"DELE": Syntax(_TRANS, 1, 1),
    b"RSET": Syntax(_TRANS, 0, 0),
    b"LAST": Syntax(_TRANS, 0, 0),
    b"NOOP": Syntax(_TRANS, 0, 0),
    b"QUIT": Syntax(None, 0, 0),
    b"CAPA": Syntax(None, 0, 0),
    b"AUTH": Syntax(_AUTH, 0, 2),
    b"STLS": Syntax(_AUTH, 0, 0),
    b"UTF8": Syntax(_AUTH, 0, 0),
}


@attr.s(frozen=True, slots=True, auto_attribs=True)
class Command:
    """
    A parsed command line: the keyword in upper case, and its arguments.
    """

    name: bytes
    args: Tuple[bytes, ...]


def parse(line: bytes, state: State) -> Command:
    """
    Parse one command line (without its line end) for a session in C{state}.

    @raise CommandError: the line is too long, empty, an unknown command,
        a command of another state, or has the wrong number of arguments.
    """
    try:
        return _parse(line, state)
    except CommandError as error:
        error.malformed = True
        raise


def _parse(line: bytes, state: State) -> Command:
    keyword, _, rest = line.partition(b" ")
    name = keyword.upper()
    limit = MAX_AUTH_OCTETS if name == b"AUTH" else MAX_COMMAND_OCTETS
    if len(line) + 2 > limit:
        raise CommandError(replies.commandTooLong(limit))
    syntax = COMMANDS.get(name)
    if syntax is None:
        if not keyword.strip():
            raise CommandError(replies.EMPTY_COMMAND)
        raise CommandError(replies.unknownCommand(keyword))
    text = name.decode("ascii")
    if syntax.state is not None and syntax.state is not state:
        if state is State.AUTHORIZATION:
            raise CommandError(replies.notBeforeLogin(text))
        raise CommandError(replies.notAfterLogin(text))
    if syntax.restOfLine:
        args: Tuple[bytes, ...] = (rest,) if rest else ()
    else:
        args = tuple(rest.split())
    if len(args) < syntax.minArgs:
        raise CommandError(replies.tooFewArguments(text.lower()))
    if len(args) > syntax.maxArgs:
        raise CommandError(replies.tooManyArguments(text.lower()))
    return Command(name, args)
