"""
End to end: the first login to a Maildir full of new mail survives
C{kill -9} at any moment.  The real popsrv (in one process and with
C{--workers 2}) is killed while it moves 20,000 new messages to C{cur/},
at three points of the move; after each restart the move goes on, and in
the end every message is there exactly once, with the size RETR sends.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Tuple

import pytest

from popsrv.wire.framing import normalizedSize
from tests.support.wire import RawClient, wire

if TYPE_CHECKING:
    from tests.support.servers import Launcher, Popsrv

MESSAGES = 20_000
# Messages in cur/ already, without their POP3 size (another program's).
FOREIGN = 100
# The fractions of new/ moved when the server is killed.
KILL_POINTS = (0.1, 0.5, 0.9)
KILL_TIMEOUT = 60.0
# RETR commands sent at once (PIPELINING).
PIPELINED = 500


def stored(number: int) -> bytes:
    """
    Message C{number} as stored: a unique first line, then lines with LF,
    CRLF, a lone CR, leading dots, 8-bit octets, and for some no final line
    end or an empty body.
    """
    lines = [b"X-Id: %d" % number, b"Subject: message %d" % number, b""]
    lines += [b".dot %d" % number, b"..", b"x" * (number % 97), b"caf\xc3\xa9 \xff", b"cr\rinside"][: 1 + number % 6]
    end = (b"\n", b"\r\n", b"\n")[number % 3]
    text = end.join(lines) + end
    return text[: -len(end)] if number % 11 == 0 else text


def deliveryName(number: int, data: bytes) -> str:
    """
    The name a delivery agent gives message C{number}: Dovecot's LDA with
    the file size, Postfix without a size, or Dovecot's LDA with both sizes.
    """
    seconds, usec = 1_700_000_000 + number // 10, number % 10
    style = number % 3
    if style == 0:
        return f"{seconds}.M{usec}P{number}.host,S={len(data)}"
    if style == 1:
        return f"{seconds}.V801I{number:x}M{usec}.host"
    return f"{seconds}.M{usec}P{number}.lda,S={len(data)},W={normalizedSize([data])}"


def fill(maildir: Path) -> Dict[int, bytes]:
    """
    Write the new messages (and a few foreign ones in cur/), as a delivery
    agent does but without its fsync; return every message by number.
    """
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    messages = {}
    for number in range(MESSAGES + FOREIGN):
        data = stored(number)
        messages[number] = data
        if number < MESSAGES:
            path = maildir / "new" / deliveryName(number, data)
        else:
            path = maildir / "cur" / f"{1_600_000_000 + number}.M1P1.courier,S={len(data)}:2,"
        path.write_bytes(data)
    return messages


def entries(directory: Path) -> int:
    """
    How many entries a directory has.
    """
    with os.scandir(directory) as scan:
        return sum(1 for _ in scan)


def processTree(pid: int) -> List[int]:
    """
    C{pid} and every process below it.
    """
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def start(launcher: Launcher, root: Path, workers: int) -> Popsrv:
    """
    Start popsrv on the Maildir root, and wait for its workers.
    """
    server = launcher.popsrv("--workers", str(workers), root=root)
    for index in range(workers if workers > 1 else 0):
        server.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    return server


def isHelper(pid: int) -> bool:
    """
    Whether a process is a helper of the Maildir store (it runs helper.py).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"helper.py" in cmdline.read()
    except OSError:
        return False


def killDuringLogin(server: Popsrv, new: Path, left: int) -> int:
    """
    Send USER and PASS, wait (without sleeping) until at most C{left}
    entries are left in C{new}, SIGKILL every process of the server but
    the helper taking the new mail (if one does), and wait until they and
    the helper (which stops once its server is gone) are all gone; return
    the entries then left in C{new}.
    """
    client = RawClient(server.port)
    try:
        assert client.readLine().startswith(b"+OK")
        client.sock.sendall(b"USER alice\r\nPASS secret\r\n")
        deadline = time.monotonic() + KILL_TIMEOUT
        while entries(new) > left:
            assert time.monotonic() < deadline, f"new/ still has {entries(new)} entries"
        pids = processTree(server.twistd.process.pid)
        for pid in pids:
            if not isHelper(pid):
                os.kill(pid, signal.SIGKILL)
        server.twistd.process.wait(KILL_TIMEOUT)
        for pid in pids[1:]:
            while _state(pid) != "Z":
                assert time.monotonic() < deadline, f"process {pid} is still there"
        return entries(new)
    finally:
        client.sock.close()
        server.twistd.stop()


def _state(pid: int) -> str:
    """
    A process's state letter (Z for a zombie), or Z if it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "Z"


def readMultiline(client: RawClient) -> bytes:
    """
    Read the body of a multi-line reply, un-dot-stuffed (the status line
    is read already).
    """
    lines = []
    while (line := client.readLine()) != b".\r\n":
        lines.append(line[1:] if line.startswith(b".") else line)
    return b"".join(lines)


def retrieveAll(server: Popsrv) -> Tuple[List[int], List[str], List[bytes]]:
    """
    Log in and return LIST's sizes, UIDL's uids and every message as RETR
    sends it (the RETRs pipelined).
    """
    with RawClient(server.port, timeout=120) as client:
        assert client.readLine().startswith(b"+OK")
        assert client.command(b"USER alice").startswith(b"+OK")
        assert client.command(b"PASS secret").startswith(b"+OK")
        assert client.command(b"LIST").startswith(b"+OK")
        sizes = [int(line.split()[1]) for line in readMultiline(client).splitlines()]
        assert client.command(b"UIDL").startswith(b"+OK")
        uids = [line.split()[1].decode() for line in readMultiline(client).splitlines()]
        bodies = []
        for first in range(1, len(sizes) + 1, PIPELINED):
            numbers = range(first, min(first + PIPELINED, len(sizes) + 1))
            client.sock.sendall(b"".join(b"RETR %d\r\n" % number for number in numbers))
            for _ in numbers:
                assert client.readLine().startswith(b"+OK")
                bodies.append(readMultiline(client))
        assert client.command(b"QUIT").startswith(b"+OK")
    return sizes, uids, bodies


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])
def test_kill_9_during_the_first_login_loses_and_duplicates_nothing(
    launcher: Launcher, tmp_path: Path, workers: int
) -> None:
    """
    SIGKILL at 10 %, 50 % and 90 % of the move of 20,000 new messages, a
    restart after each, and a login that finishes: every message is served
    exactly once, RETR sends what LIST announced and what was stored, and
    nothing is left in new/ or twice in cur/.
    """
    root = tmp_path / "mail"
    maildir = root / "alice"
    messages = fill(maildir)
    new = maildir / "new"
    leftAfterKills = []
    for fraction in KILL_POINTS:
        server = start(launcher, root, workers)
        leftAfterKills.append(killDuringLogin(server, new, int(MESSAGES * (1 - fraction))))
    # The first kill at least came before the move was over.
    assert 0 < leftAfterKills[0] < MESSAGES
    server = start(launcher, root, workers)
    sizes, uids, bodies = retrieveAll(server)
    assert entries(new) == 0
    assert entries(maildir / "cur") == MESSAGES + FOREIGN
    assert len(set(uids)) == len(uids)
    assert [len(body) for body in bodies] == sizes
    assert sorted(bodies) == sorted(wire(data) for data in messages.values())
