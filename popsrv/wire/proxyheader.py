"""
The header of the PROXY protocol, versions 1 and 2 (HAProxy's C{send-proxy}
and C{send-proxy-v2}): a proxy that forwards a TCP connection sends it
first, to tell the server who the client is.

A sans-IO parser: L{ProxyHeaderParser.feed} takes the octets a connection
sends, as they come, and returns the L{ProxyHeader} with the octets that
followed it, or raises L{BadProxyHeader} with a one-line reason as soon as
they cannot be a header.  Nothing is guessed: what the protocol's
specification does not allow is refused.
"""

from __future__ import annotations

import ipaddress
from typing import Optional, Tuple, Union

import attr
from twisted.internet.address import IPv4Address, IPv6Address

__all__ = ["MAX_V1_OCTETS", "V1_SIGNATURE", "V2_SIGNATURE", "BadProxyHeader", "ProxyHeader", "ProxyHeaderParser"]

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# A version 1 header is one line of at most 107 octets, CRLF included.
MAX_V1_OCTETS = 107
# Version 2: the signature, version and command, family and transport,
# and the length of the rest.
_V2_FIXED_OCTETS = 16
_V2_LOCAL, _V2_PROXY = 0, 1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_STREAM = 1
# The octets of the address block of each family: two addresses and, for
# IP, two ports.
_V2_ADDRESS_OCTETS = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

Address = Union[IPv4Address, IPv6Address]


class BadProxyHeader(ValueError):
    """
    What a connection sent is not a valid PROXY header; the message says
    why, in one line.
    """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class ProxyHeader:
    """
    A parsed PROXY header.

    @ivar version: 1 or 2.
    @ivar source: the client's address, or C{None} where the header gives
        no TCP address (version 1 C{UNKNOWN}; version 2 C{LOCAL}, as in a
        proxy's health check, or an unspecified or UNIX family, or UDP):
        the connection then stands for itself.
    @ivar destination: the address the client connected to, or C{None}
        with C{source}.
    """

    version: int
    source: Optional[Address] = None
    destination: Optional[Address] = None


def _ip(text: str, version: int) -> str:
    """
    An IP address of a version 1 line, in the usual text form.
    """
    try:
        if "%" in text:  # a scope is no address of the client
            raise ValueError(text)
        return str(ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text))
    except ValueError:
        raise BadProxyHeader(f"PROXY header with an invalid IPv{version} address") from None


def _port(text: str) -> int:
    """
    A port of a version 1 line: a decimal number from 0 to 65535.
    """
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise BadProxyHeader("PROXY header with an invalid port")
    return int(text)


def _parseV1(line: bytes) -> ProxyHeader:
    """
    Parse a version 1 line, without its CRLF.
    """
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise BadProxyHeader("PROXY header line is not ASCII") from None
    fields = text.split(" ")
    if len(fields) < 2 or fields[0] != "PROXY":
        raise BadProxyHeader("PROXY header line without a protocol")
    protocol = fields[1]
    if protocol == "UNKNOWN":
        # The rest of the line, if any, is to be ignored.
        return ProxyHeader(1)
    if protocol not in ("TCP4", "TCP6"):
        raise BadProxyHeader("PROXY header with a protocol other than TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise BadProxyHeader("PROXY header line without its two addresses and two ports")
    version = 4 if protocol == "TCP4" else 6
    kind = IPv4Address if version == 4 else IPv6Address
    source = kind("TCP", _ip(fields[2], version), _port(fields[4]))
    destination = kind("TCP", _ip(fields[3], version), _port(fields[5]))
    return ProxyHeader(1, source, destination)


def _parseV2(header: bytes) -> ProxyHeader:
    """
    Parse a whole version 2 header, already checked by
    L{ProxyHeaderParser._checkV2}.
    """
    command = header[12] & 0x0F
    family, transport = header[13] >> 4, header[13] & 0x0F
    if command == _V2_LOCAL or transport != _STREAM or family not in (_AF_INET, _AF_INET6):
        return ProxyHeader(2)
    addresses = header[_V2_FIXED_OCTETS:]
    size = 4 if family == _AF_INET else 16
    ports = addresses[2 * size:2 * size + 4]

    def address(packed: bytes, port: bytes) -> Address:
        number = int.from_bytes(port, "big")
        if size == 4:
            return IPv4Address("TCP", str(ipaddress.IPv4Address(packed)), number)
        return IPv6Address("TCP", str(ipaddress.IPv6Address(packed)), number)

    return ProxyHeader(2, address(addresses[:size], ports[:2]), address(addresses[size:2 * size], ports[2:]))


class ProxyHeaderParser:
    """
    Reads one PROXY header, version 1 or 2, from the first octets of a
    connection, fed as they arrive.
    """

    def __init__(self) -> None:
        # Appended to in place: a version 2 header may announce 64 KiB and
        # come an octet at a time.
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Optional[Tuple[ProxyHeader, bytes]]:
        """
        Take the next octets of the connection.

        @return: C{None} while the header is incomplete; then the header
            and the octets that followed it (the start of the proxied
            connection's own data).
        @raise BadProxyHeader: as soon as the octets cannot begin a valid
            header.
        """
        self._buffer += data
        buffer = self._buffer
        if V2_SIGNATURE.startswith(buffer[:len(V2_SIGNATURE)]):
            return self._feedV2(buffer)
        if V1_SIGNATURE.startswith(buffer[:len(V1_SIGNATURE)]):
            return self._feedV1(buffer)
        raise BadProxyHeader("no PROXY header")

    def _feedV1(self, buffer: bytearray) -> Optional[Tuple[ProxyHeader, bytes]]:
        end = buffer.find(b"\r\n", 0, MAX_V1_OCTETS)
        if end < 0:
            if len(buffer) >= MAX_V1_OCTETS:
                raise BadProxyHeader(f"PROXY header line longer than {MAX_V1_OCTETS} octets")
            return None
        return _parseV1(bytes(buffer[:end])), bytes(buffer[end + 2:])

    def _feedV2(self, buffer: bytearray) -> Optional[Tuple[ProxyHeader, bytes]]:
        if len(buffer) < _V2_FIXED_OCTETS:
            return None
        length = self._checkV2(buffer)
        end = _V2_FIXED_OCTETS + length
        if len(buffer) < end:
            return None
        return _parseV2(bytes(buffer[:end])), bytes(buffer[end:])

    @staticmethod
    def _checkV2(buffer: bytearray) -> int:
        """
        Check the fixed part of a version 2 header; return the length of
        the rest.
        """
        version, command = buffer[12] >> 4, buffer[12] & 0x0F
        if version != 2:
            raise BadProxyHeader(f"PROXY header of unknown version {version}")
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise BadProxyHeader(f"PROXY header with unknown command {command}")
        family, transport = buffer[13] >> 4, buffer[13] & 0x0F
        if family not in _V2_ADDRESS_OCTETS or transport > 2:
            raise BadProxyHeader("PROXY header with an unknown address family or transport")
        length = int.from_bytes(buffer[14:16], "big")
        needed = _V2_ADDRESS_OCTETS[family]
        if command == _V2_PROXY and length < needed:
            raise BadProxyHeader(f"PROXY header of {length} octets, too short for its {needed} octets of addresses")
        return length
