"""
POP3 UIDL formats written as Dovecot's C{pop3_uidl_format} setting: a site
moving from Dovecot gives popsrv its old setting, and popsrv makes the
UIDLs Dovecot made from the same data, so that "leave mail on server"
clients do not fetch everything again.

A format is parsed once, at startup (L{parseUidlFormat}: what Dovecot
would not have served, or popsrv cannot make, is refused with one line),
and expanded for each message (L{UidlFormat.expand}).  The expansion is
Dovecot's own (its C{var_expand}, as of 2.3), byte for byte:

    - C{%u} the message's UID, C{%v} the mailbox's UIDVALIDITY (both in
      decimal), C{%f} the Maildir base name, C{%g} the message's GUID,
      C{%m} the MD5 of its header (refused for Maildirs: see
      L{MAILDIR_VARIABLES}), C{%%} a C{%};
    - each may have modifiers before its letter, applied in order: C{L}
      (ASCII lower case), C{U} (upper case), C{X} (a decimal number in
      lower-case hexadecimal, 0 if it is not one), C{R} (reversed), C{M}
      (its MD5, in hexadecimal), C{T} (trailing white space removed);
    - and before those a width: C{%08Xu} pads with zeros to 8, C{%8u}
      truncates to 8, C{%3.8f} takes 8 octets from the fourth, C{%-3.f}
      the last three.
"""

from __future__ import annotations

import hashlib
import re
from typing import AbstractSet, Callable, List, Mapping, Tuple, Union

__all__ = ["DEFAULT_UIDL_FORMAT", "MAILDIR_VARIABLES", "BadUidlFormat", "UidlFormat", "parseUidlFormat"]

# Dovecot's default pop3_uidl_format.
DEFAULT_UIDL_FORMAT = "%08Xu%08Xv"
# The variables a format may use, and what each is.
VARIABLES = {
    "u": "the message's UID",
    "v": "the mailbox's UIDVALIDITY",
    "m": "the MD5 of the message's header",
    "f": "the Maildir base name",
    "g": "the message's GUID",
}
# What Dovecot's Maildirs can give: not %m.  Dovecot computes the header
# MD5 for mbox only; on a Maildir its pop3 answers UIDL with "Header MD5 not
# found" and disconnects (tried with 2.3.19), so no Maildir was ever served
# with a %m format.
MAILDIR_VARIABLES = frozenset("uvfg")
# Variables that tell messages apart: a format needs one of them.
_DISTINCT = frozenset("umfg")
# Dovecot's modifiers, those popsrv applies and those it refuses.
_MODIFIERS = "LUEXRHNMDT"
_REFUSED_MODIFIERS = {
    "E": "escaping",
    "H": "a hash modulo the width",
    "N": "a hash modulo the width",
    "D": "an LDAP DN",
}
# Dovecot applies at most this many modifiers to one variable.
_MAX_MODIFIERS = 10
_DIGITS = re.compile(rb"[0-9]+")
_SPACE = b" \t\n\v\f\r"


class BadUidlFormat(ValueError):
    """
    A UIDL format that popsrv refuses; its message is one line saying why.
    """


def _hex(value: bytes) -> bytes:
    """Dovecot's C{X}: a decimal number in lower-case hexadecimal, else 0."""
    number = int(value) if _DIGITS.fullmatch(value) else 0
    return b"%x" % (number if number < 2**64 else 0)


_APPLY: Mapping[str, Callable[[bytes], bytes]] = {
    "L": bytes.lower,
    "U": bytes.upper,
    "X": _hex,
    "R": lambda value: value[::-1],
    "M": lambda value: hashlib.md5(value).hexdigest().encode("ascii"),
    "T": lambda value: value.rstrip(_SPACE),
}


class _Field:
    """
    One C{%} field of a format: its variable (or C{%}), modifiers, offset,
    width and whether it pads with zeros.
    """

    __slots__ = ("key", "modifiers", "offset", "width", "zeros", "plain")

    def __init__(
        self, key: str, modifiers: Tuple[Callable[[bytes], bytes], ...], offset: int, width: int, zeros: bool,
    ) -> None:
        self.key = key
        self.modifiers = modifiers
        self.offset = offset
        self.width = width
        self.zeros = zeros
        # Whether the value is used as it is.
        self.plain = not modifiers and not offset and not width

    def expand(self, value: bytes) -> bytes:
        """
        Apply the modifiers, the offset and the width to a value, as
        Dovecot does.
        """
        if self.plain:
            return value
        for modify in self.modifiers:
            value = modify(value)
        if self.offset < 0:
            value = value[len(value) + self.offset:] if len(value) > -self.offset else value
        else:
            value = value[self.offset:]
        width = self.width
        if width == 0:
            return value
        if not self.zeros:
            if width < 0:
                width += len(value)
            # (A width left below zero is a huge size_t in Dovecot: all of it.)
            return value if width < 0 else value[:width]
        return value.rjust(width, b"0")


class UidlFormat:
    """
    A parsed UIDL format (see L{parseUidlFormat}).

    @ivar text: the format as given.
    @ivar variables: the letters of the variables it uses.
    """

    def __init__(self, text: str, pieces: List[Union[bytes, _Field]]) -> None:
        self.text = text
        self._pieces = pieces
        self.variables = frozenset(p.key for p in pieces if isinstance(p, _Field) and p.key != "%")

    def __repr__(self) -> str:
        return f"UidlFormat({self.text!r})"

    def expand(self, values: Mapping[str, bytes]) -> bytes:
        """
        The UIDL of one message.

        @param values: the value of each variable the format uses (of
            L{variables}), by letter: C{b"7"} for C{"u"}, C{b"1700000000"}
            for C{"v"}, a base name for C{"f"}.
        @return: the UIDL as Dovecot makes it; the caller checks that it
            is a UIDL POP3 allows (1 to 70 octets from 0x21 to 0x7E).
        """
        return b"".join([
            piece if isinstance(piece, bytes) else piece.expand(b"%" if piece.key == "%" else values[piece.key])
            for piece in self._pieces
        ])


def _number(text: str, position: int) -> Tuple[int, int]:
    """
    The decimal number at C{position} (0 if there is none), and the
    position after it.
    """
    end = position
    while end < len(text) and text[end].isascii() and text[end].isdigit():
        end += 1
    return (int(text[position:end]) if end > position else 0), end


def _parseField(text: str, position: int, supported: AbstractSet[str]) -> Tuple[Union[_Field, None], int]:
    """
    Parse the field after the C{%} at C{position - 1}: C{(field, position
    after it)}, or C{(None, end)} for a C{%} at the end, which Dovecot
    drops.

    @raise BadUidlFormat: if popsrv refuses the field.
    """

    def at(index: int) -> str:
        return text[index] if index < len(text) else ""

    sign, zeros, offset = 1, False, 0
    if at(position) == "-":
        sign, position = -1, position + 1
    if at(position) == "0":
        zeros, position = True, position + 1
    width, position = _number(text, position)
    if at(position) == ".":
        offset, sign, width, zeros, position = sign * width, 1, 0, False, position + 1
        if at(position) == "0":
            zeros, position = True, position + 1
        if at(position) == "-":
            sign, position = -1, position + 1
        width, position = _number(text, position)
        width *= sign
    modifiers: List[Callable[[bytes], bytes]] = []
    while len(modifiers) < _MAX_MODIFIERS and at(position) and at(position) in _MODIFIERS:
        letter = at(position)
        if letter in _REFUSED_MODIFIERS:
            raise BadUidlFormat(
                f"the modifier %{letter} ({_REFUSED_MODIFIERS[letter]}) is not supported: "
                "use L, U, X, R, M or T"
            )
        modifiers.append(_APPLY[letter])
        position += 1
    key = at(position)
    if not key:
        return None, position
    if key == "{":
        raise BadUidlFormat("%{...} variables are not supported: write %u, %v, %f or %g")
    if key == "m" and "m" not in supported:
        raise BadUidlFormat(
            "%m (the MD5 of the message header) is refused: Dovecot computes it for mbox only, and its "
            "pop3 fails on a Maildir with it, so no Maildir was ever served with %m UIDLs"
        )
    if key != "%" and key not in supported:
        shown = ", ".join(f"%{letter}" for letter in "uvmfg" if letter in supported)
        raise BadUidlFormat(f"%{key} is not a UIDL variable: use {shown} (or %% for a %)")
    return _Field(key, tuple(modifiers), offset, width, zeros), position + 1


def parseUidlFormat(text: str, supported: AbstractSet[str] = MAILDIR_VARIABLES) -> UidlFormat:
    """
    Parse a UIDL format written as Dovecot's C{pop3_uidl_format}.

    @param supported: the variables the store can give (by default those
        of a Maildir: C{u}, C{v}, C{f} and C{g}).
    @raise BadUidlFormat: with one line saying why, if the format uses a
        variable or a modifier popsrv does not make, or one Dovecot does not
        know (its pop3 would have failed with it), uses none of C{%u},
        C{%m}, C{%f} and C{%g} (every message would have one UIDL), or has
        text that is not printable ASCII without spaces (as UIDLs are).
    """
    pieces: List[Union[bytes, _Field]] = []
    literal: List[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char != "%":
            if not " " < char <= "~":
                raise BadUidlFormat(f"{char!r} cannot be in a UIDL, which is printable ASCII without spaces")
            literal.append(char)
            position += 1
            continue
        field, position = _parseField(text, position + 1, supported)
        if field is None:
            continue
        if literal:
            pieces.append("".join(literal).encode("ascii"))
            literal = []
        pieces.append(field)
    if literal:
        pieces.append("".join(literal).encode("ascii"))
    parsed = UidlFormat(text, pieces)
    if not parsed.variables & _DISTINCT:
        raise BadUidlFormat(
            "it uses none of %u, %f and %g, so every message would have the same UIDL"
        )
    return parsed
