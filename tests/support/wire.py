"""
The wire forms of stored messages, built line by line (independently of
L{popsrv.wire.framing}), and a raw POP3 client for what poplib hides.
"""

from __future__ import annotations

import socket
from typing import List

from tests.support.servers import HOST

SOCKET_TIMEOUT = 30.0


def storedLines(stored: bytes) -> List[bytes]:
    """
    The lines of a stored message without their line ends: a line ends at
    LF, and a CR just before that LF belongs to the line end.
    """
    parts = stored.split(b"\n")
    lines = [part[:-1] if part.endswith(b"\r") else part for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def wire(stored: bytes) -> bytes:
    """
    A stored message as POP3 sends it, before dot-stuffing: every line ends
    in CRLF, and an unterminated last line gets one.
    """
    return b"".join(line + b"\r\n" for line in storedLines(stored))


def topWire(stored: bytes, bodyLines: int) -> bytes:
    """
    What TOP sends (before dot-stuffing): the headers, the blank line, and
    the first C{bodyLines} lines of the body.
    """
    lines = storedLines(stored)
    if b"" in lines:
        lines = lines[: lines.index(b"") + 1 + bodyLines]
    return b"".join(line + b"\r\n" for line in lines)


def dotStuffed(wireForm: bytes) -> bytes:
    """
    Dot-stuff a wire form made of CRLF-terminated lines.
    """
    lines = wireForm.split(b"\r\n")
    assert lines[-1] == b""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines[:-1])


class RawClient:
    """
    A POP3 connection over a plain socket, for what poplib hides.
    """

    def __init__(self, port: int, timeout: float = SOCKET_TIMEOUT) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.sock.close()

    @property
    def localPort(self) -> int:
        return self.sock.getsockname()[1]

    def readLine(self) -> bytes:
        """
        Read one line, CRLF included.
        """
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed; unterminated data {self.buffer!r}")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def command(self, line: bytes) -> bytes:
        """
        Send one command and return its one-line reply.
        """
        self.sock.sendall(line + b"\r\n")
        return self.readLine()

    def readUntilClosed(self) -> bytes:
        """
        Read everything until the server closes the connection.
        """
        chunks = [self.buffer]
        self.buffer = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


