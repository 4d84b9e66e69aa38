"""
Tests of L{popsrv.store.uidlformat}: Dovecot's C{pop3_uidl_format} parsed
once and expanded per message as Dovecot does (the expansions here are
those Dovecot 2.3.19's pop3 showed; C{tests/test_migration_e2e.py}
compares with a real Dovecot), and every format popsrv cannot serve refused
with one line.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popsrv.store.uidlformat import DEFAULT_UIDL_FORMAT, BadUidlFormat, parseUidlFormat

NAME = b"1700000001.M12345P9991.Host.Example,S=20"
VALUES = {"u": b"1", "v": b"1796589799", "f": NAME, "g": NAME}


@pytest.mark.parametrize(
    "text, expected",
    [
        # Dovecot's default: lower-case hexadecimal, whatever the X suggests.
        (DEFAULT_UIDL_FORMAT, b"000000016b15c8e7"),
        ("%v.%u", b"1796589799.1"),
        ("UID%u-%v", b"UID1-1796589799"),
        ("%f", NAME),
        ("%g", NAME),
        ("%Xu", b"1"),
        ("%010u", b"0000000001"),
        ("%Lf", NAME.lower()),
        ("%Uf", NAME.upper()),
        # Modifiers apply in order: U of digits changes nothing, then X.
        ("%UXv%u", b"6b15c8e71"),
        ("%Mu", b"c4ca4238a0b923820dcc509a6f75849b"),
        ("%Rf", NAME[::-1]),
        ("%Tf", NAME),
        ("%%%u", b"%1"),
        # Widths truncate, zero-padded widths pad; an offset skips, a
        # negative one counts from the end.
        ("%5f", b"17000"),
        ("%.5f", b"17000"),
        ("%3.4f", b"0000"),
        ("%0.8f", b"17000000"),
        ("%-5.f", b",S=20"),
        ("%.-4f", NAME[:-4]),
        ("%-3.-2f", b"="),
        ("%-.2f", b"17"),
        ("%3.08u", b"00000000"),
        ("%08u%08Xv", b"000000016b15c8e7"),
        # A % at the end is dropped, as Dovecot drops it.
        ("%u%", b"1"),
        ("%u%08", b"1"),
    ],
)
def test_expandsAsDovecot(text: str, expected: bytes) -> None:
    """Each format expands to what Dovecot's pop3 showed for the same message."""
    assert parseUidlFormat(text).expand(VALUES) == expected


def test_xOfWhatIsNotANumberIsZero() -> None:
    """X reads a decimal number, as Dovecot's str_to_ullong: anything else, or more than 64 bits, is 0."""
    uidl = parseUidlFormat("%Xf%Xu")
    assert uidl.expand({"f": b"abc", "u": b"18446744073709551615"}) == b"0ffffffffffffffff"
    assert uidl.expand({"f": b"-1", "u": b"18446744073709551616"}) == b"00"


def test_variablesAreThoseUsed() -> None:
    """A format knows its variables (what a store must give it)."""
    assert parseUidlFormat(DEFAULT_UIDL_FORMAT).variables == {"u", "v"}
    assert parseUidlFormat("%%u%f").variables == {"f"}


@pytest.mark.parametrize(
    "text, why",
    [
        ("%m", "Dovecot computes it for mbox only"),
        ("%08Xm", "Dovecot computes it for mbox only"),
        ("%{uid}", "%{...} variables are not supported"),
        ("%x%u", "%x is not a UIDL variable"),
        ("%Hu", "the modifier %H"),
        ("%Eu", "the modifier %E"),
        ("%u %v", "' ' cannot be in a UIDL"),
        ("%u\u00e9", "cannot be in a UIDL"),
        ("%u\x7f", "cannot be in a UIDL"),
        ("%v", "every message would have the same UIDL"),
        ("UID%%u", "every message would have the same UIDL"),
        ("", "every message would have the same UIDL"),
    ],
)
def test_refusedWithOneLine(text: str, why: str) -> None:
    """What Dovecot did not serve, or popsrv cannot make, is refused with one line saying why."""
    with pytest.raises(BadUidlFormat) as refused:
        parseUidlFormat(text)
    assert why in str(refused.value)
    assert "\n" not in str(refused.value)


def test_mdFiveForStoresThatHaveIt() -> None:
    """A store that can give %m (an mbox) may allow it."""
    uidl = parseUidlFormat("%m", supported=frozenset("uvmfg"))
    assert uidl.expand({"m": b"0123abcd"}) == b"0123abcd"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("%0123456789.-LUXRMTEHNDuvmfg{}%x A~"), max_size=16))
def test_anyTextParsesOrIsRefusedAndExpandsWithoutError(text: str) -> None:
    """Whatever the text, parsing either gives a format or refuses it; a format expands any values."""
    try:
        uidl = parseUidlFormat(text)
    except BadUidlFormat as refused:
        assert "\n" not in str(refused)
        return
    result = uidl.expand({"u": b"4294967294", "v": b"1", "f": b"x\xff y", "g": b""})
    assert isinstance(result, bytes)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 2**70))
def test_expandNeverFailsOnHostileValues(name: bytes, number: int) -> None:
    """Values a Maildir's owner controls (names, uidlist fields) never make an expansion fail."""
    uidl = parseUidlFormat("%08Xu%Xf%.3g%-2.Lf%Mg%Rf%Tf")
    uidl.expand({"u": str(number).encode(), "f": name, "g": name})
