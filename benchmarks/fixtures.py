"""
Maildirs for the benchmarks.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from popsrv.store.maildir import deliver  # noqa: E402

__all__ = ["benchmarkMessage", "makeMaildirs"]


def benchmarkMessage(size: int) -> bytes:
    """
    A plain text message of about C{size} octets, LF line ends, as an MDA
    stores it.
    """
    line = b"line of a benchmark message, long enough to look like a real one\n"
    head = b"From: bench@example.com\nTo: user@example.com\nSubject: benchmark\n\n"
    return head + line * max(0, (size - len(head)) // len(line))


def makeMaildirs(root: str, users: int, messages: int, size: int) -> dict[str, str]:
    """
    Deliver C{messages} messages of about C{size} octets into the new/ of
    C{users} Maildirs under C{root}; return the users (user<n>) and their
    passwords (pw<n>).
    """
    message = benchmarkMessage(size)
    accounts = {}
    for n in range(users):
        accounts[f"user{n}"] = f"pw{n}"
        for _ in range(messages):
            deliver(os.path.join(root, f"user{n}"), message)
    return accounts
