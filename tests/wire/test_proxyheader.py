"""
Tests of the PROXY header parser (L{popsrv.wire.proxyheader}): versions 1
and 2 as HAProxy sends them, fed whole and octet by octet, and what the
specification does not allow, refused with a reason.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address

from popsrv.wire.proxyheader import (
    MAX_V1_OCTETS,
    V2_SIGNATURE,
    BadProxyHeader,
    ProxyHeader,
    ProxyHeaderParser,
)

TAIL = b"CAPA\r\nUSER alice\r\n"


def v2(
    command: int = 1, family: int = 1, transport: int = 1, body: Optional[bytes] = None,
    length: Optional[int] = None, version: int = 2,
) -> bytes:
    """
    A version 2 header; by default PROXY over TCP4 from 192.0.2.7:5555 to
    127.0.0.1:110.
    """
    if body is None:
        if family == 2:
            body = (ipaddress.IPv6Address("2001:db8::7").packed + ipaddress.IPv6Address("::1").packed
                    + struct.pack("!HH", 5555, 110))
        else:
            body = bytes([192, 0, 2, 7, 127, 0, 0, 1]) + struct.pack("!HH", 5555, 110)
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | command, family << 4 | transport]) + struct.pack("!H", size) + body


def parse(data: bytes) -> Optional[Tuple[ProxyHeader, bytes]]:
    """Feed C{data} to a new parser at once."""
    return ProxyHeaderParser().feed(data)


def parseByOctet(data: bytes) -> Optional[Tuple[ProxyHeader, bytes]]:
    """
    Feed C{data} one octet at a time, as a slow network might; the result
    comes with the last octet of the header and the rest follows it.
    """
    parser = ProxyHeaderParser()
    for index in range(len(data)):
        result = parser.feed(data[index:index + 1])
        if result is not None:
            header, rest = result
            return header, rest + data[index + 1:]
    return None


TCP4 = ProxyHeader(1, IPv4Address("TCP", "192.0.2.7", 5555), IPv4Address("TCP", "127.0.0.1", 110))


@pytest.mark.parametrize("feed", [parse, parseByOctet])
@pytest.mark.parametrize("data, expected", [
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 110\r\n", TCP4),
    (b"PROXY TCP6 2001:db8::7 ::1 5555 110\r\n",
     ProxyHeader(1, IPv6Address("TCP", "2001:db8::7", 5555), IPv6Address("TCP", "::1", 110))),
    (b"PROXY TCP6 2001:DB8:0:0::7 ::1 0 65535\r\n",
     ProxyHeader(1, IPv6Address("TCP", "2001:db8::7", 0), IPv6Address("TCP", "::1", 65535))),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1)),
    (b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 0\r\n", ProxyHeader(1)),
    (v2(), ProxyHeader(2, TCP4.source, TCP4.destination)),
    (v2(family=2), ProxyHeader(2, IPv6Address("TCP", "2001:db8::7", 5555), IPv6Address("TCP", "::1", 110))),
    # TLVs after the addresses (here PP2_TYPE_UNIQUE_ID) are skipped.
    (v2(body=v2()[16:] + b"\x05\x00\x03abc"), ProxyHeader(2, TCP4.source, TCP4.destination)),
    # A proxy's health check, an unspecified family, UDP, a UNIX socket:
    # no TCP address, the connection stands for itself.
    (v2(command=0, family=0, transport=0, body=b""), ProxyHeader(2)),
    (v2(command=0), ProxyHeader(2)),
    (v2(family=0, transport=0, body=b""), ProxyHeader(2)),
    (v2(transport=2), ProxyHeader(2)),
    (v2(family=3, body=b"/run/client".ljust(108, b"\0") + b"/run/popsrv".ljust(108, b"\0")), ProxyHeader(2)),
])
def test_headers(feed, data: bytes, expected: ProxyHeader) -> None:
    """
    Headers of both versions are read whole or octet by octet, and what
    follows them is handed back untouched.
    """
    assert feed(data + TAIL) == (expected, TAIL)


def test_incompleteHeadersWait() -> None:
    """
    Every proper prefix of a header is incomplete, not refused.
    """
    for header in (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 110\r\n", v2(), v2(command=0, body=b"")):
        for end in range(len(header)):
            assert parse(header[:end]) is None


@pytest.mark.parametrize("data, why", [
    (b"USER alice\r\n", "no PROXY header"),
    (b"\r\nUSER alice\r\n", "no PROXY header"),
    (b"GET / HTTP/1.0\r\n\r\n", "no PROXY header"),
    (b"PROXZ", "no PROXY header"),
    (b"\x16\x03\x01\x02\x00", "no PROXY header"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 555x 110\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 110\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 -1 110\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 \xd9\xa1\r\n", "not ASCII"),
    (b"PROXY TCP4 192.0.2.256 127.0.0.1 5555 110\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 192.0.2.07 127.0.0.1 5555 110\r\n", "invalid IPv4 address"),
    (b"PROXY TCP4 2001:db8::7 127.0.0.1 5555 110\r\n", "invalid IPv4 address"),
    (b"PROXY TCP6 192.0.2.7 ::1 5555 110\r\n", "invalid IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 5555 110\r\n", "invalid IPv6 address"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555\r\n", "two addresses and two ports"),
    (b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 110 extra\r\n", "two addresses and two ports"),
    (b"PROXY TCP4  192.0.2.7 127.0.0.1 5555 110\r\n", "two addresses and two ports"),
    (b"PROXY UDP4 192.0.2.7 127.0.0.1 5555 110\r\n", "protocol other than"),
    (b"PROXY \r\n", "protocol other than"),
    (b"PROXY\r\n", "no PROXY header"),
    (b"PROXY UNKNOWN " + b"x" * (MAX_V1_OCTETS - 15) + b"\r\n", f"longer than {MAX_V1_OCTETS} octets"),
    (b"PROXY TCP4 " + b"1" * 200, f"longer than {MAX_V1_OCTETS} octets"),
    (v2(version=1), "unknown version 1"),
    (v2(version=3), "unknown version 3"),
    (v2(command=2), "unknown command 2"),
    (v2(family=4), "unknown address family"),
    (v2(transport=3), "unknown address family or transport"),
    (v2(length=4), "PROXY header of 4 octets, too short for its 12 octets of addresses"),
    (v2(family=2, length=12), "too short for its 36 octets"),
    (v2(family=3, length=0), "too short for its 216 octets"),
])
def test_badHeaders(data: bytes, why: str) -> None:
    """
    What is not a header, whole or octet by octet, is refused with a
    one-line reason.
    """
    for feed in (parse, parseByOctet):
        with pytest.raises(BadProxyHeader) as raised:
            feed(data + TAIL)
        assert why in str(raised.value)
        assert "\n" not in str(raised.value)


def test_longestVersion1Line() -> None:
    """
    A version 1 line of exactly 107 octets, CRLF included, is a header;
    one octet more is not.
    """
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1_OCTETS - 16) + b"\r\n"
    assert len(line) == MAX_V1_OCTETS
    assert parse(line + TAIL) == (ProxyHeader(1), TAIL)
    with pytest.raises(BadProxyHeader):
        parse(line[:-2] + b"x\r\n")


def test_shortVersion2LengthIsRefusedAtOnce() -> None:
    """
    A version 2 header whose length is too short for its addresses is
    refused as soon as its fixed part arrives: nothing is waited for.
    """
    with pytest.raises(BadProxyHeader):
        parse(v2(length=0)[:16])


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=5))
def test_anyOctetsEndInAHeaderOrARefusal(data: bytes, cuts: list[int]) -> None:
    """
    Whatever arrives, in whatever pieces, the parser returns nothing yet, a
    header, or raises L{BadProxyHeader}: never any other error.
    """
    parser = ProxyHeaderParser()
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    try:
        for start, end in zip(bounds, bounds[1:]):
            if parser.feed(data[start:end]) is not None:
                break
    except BadProxyHeader:
        pass


@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=300))
def test_anyOctetsAfterASignature(signature: bytes, data: bytes) -> None:
    """
    Octets after a valid signature (the interesting case for the parsers
    of both versions) never raise anything but L{BadProxyHeader}.
    """
    try:
        parse(signature + data)
    except BadProxyHeader:
        pass


def test_theLongestVersion2HeaderOctetByOctet() -> None:
    """
    A version 2 header of the largest length (64 KiB of TLVs after the
    addresses), fed an octet at a time, is read whole.
    """
    tlvs = b"\x05" + struct.pack("!H", 65535 - 12 - 3) + b"u" * (65535 - 12 - 3)
    header = v2(body=v2()[16:] + tlvs)
    assert parseByOctet(header + TAIL) == (ProxyHeader(2, TCP4.source, TCP4.destination), TAIL)
