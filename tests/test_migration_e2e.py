"""
End-to-end tests of Maildirs moved from Dovecot and Courier: the old
server itself (Dovecot's pop3, Courier's pop3d: L{tests.support.oldservers})
serves a Maildir and writes its file of UIDLs; then the real popsrv under
twistd, in one process and with C{--workers 2}, serves the same Maildir,
and a POP3 client sees the UIDLs (and numbers, and sizes) the old server
showed, through new mail, deletions and restarts.
"""

from __future__ import annotations

import os
import poplib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List

import pytest

from popsrv.store.maildir import deliver
from tests.support.oldservers import (
    DOVECOT_POP3,
    courierPop3d,
    dovecotSession,
    handToDovecot,
    listing,
    runCourier,
)
from tests.support.servers import Popsrv
from tests.test_e2e import login, sizeListing, uidListing

if TYPE_CHECKING:
    from tests.support.servers import Launcher


def sized(content: bytes) -> str:
    """The size fields Dovecot's LDA writes for a message."""
    crlf = len(content) + content.count(b"\n") - content.count(b"\r\n")
    return f",S={len(content)},W={crlf}"


ONE = b"Subject: one\n\nfirst message\nsecond line\n"
FOUR = b"Subject: four\n\nflagged\n\n\n\n\n\n\n\n"
# Messages as MDAs leave them: Dovecot's LDA (sizes in the name), others
# (none), some already read by an IMAP client (in cur/, flagged).
MESSAGES = {
    f"new/1700000001.M100P1.mx.example,S={len(ONE)}": ONE,
    "new/1700000002.M200P1.mx.example": b"Subject: two\r\n\r\nCRLF already\r\n",
    "cur/1700000003.M300P1.mx.example:2,S": b"Subject: three\n\nseen by IMAP\n",
    f"cur/1700000004.M400P1.mx.example{sized(FOUR)}:2,F": FOUR,
}
# Delivered after Dovecot's first session, but named earlier: Dovecot gives
# it the next UID, so its order differs from popsrv's own.
LATE = ("new/1600000000.M1P1.mx.example", b"Subject: late\n\nold name, new uid\n")


def needDovecot() -> None:
    if not os.access(DOVECOT_POP3, os.X_OK):
        pytest.skip("Dovecot's pop3 is not installed (apt-get install dovecot-pop3d, as .ci/run does)")


def makeMaildir(maildir: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for name, content in MESSAGES.items():
        (maildir / name).write_bytes(content)


def dovecotListing(maildir: Path, uidlFormat: str, extra: str = "") -> Dict[int, str]:
    """UIDL of a Dovecot session with that format."""
    session = dovecotSession(maildir, uidlFormat, ["UIDL"], extra)
    assert session.returncode == 0, session.stderr
    return listing(session.stdout)


def movedFromDovecot(root: Path) -> Dict[str, Dict[int, str]]:
    """
    alice's Maildir under C{root}, served by Dovecot twice (with new mail
    between): the UIDL and LIST of its last session.
    """
    maildir = root / "alice"
    makeMaildir(maildir)
    first = dovecotListing(maildir, "%08Xu%08Xv")
    assert len(first) == 4
    (maildir / LATE[0]).write_bytes(LATE[1])
    handToDovecot(maildir)
    session = dovecotSession(maildir, "%08Xu%08Xv", ["UIDL", "LIST"])
    uidls, sizes = listing(session.stdout), listing(session.stdout, "LIST")
    assert {number: uidls[number] for number in first} == first
    return {"uidl": uidls, "list": sizes}


def start(launcher: Launcher, root: Path, workers: int, *extra: str) -> Popsrv:
    server = launcher.popsrv("--workers", str(workers), *extra, root=root)
    for index in range(workers if workers > 1 else 0):
        server.twistd.waitFor(rf"worker {index}\] worker ready", timeout=30)
    return server


def uidlAndList(server: Popsrv) -> tuple:
    client = login(server)
    try:
        return uidListing(client), {number: str(size) for number, size in sizeListing(client).items()}
    finally:
        client.quit()


@pytest.mark.parametrize("workers", [1, 2])
def test_dovecotUidlsKeptThroughNewMailDeletionsAndRestarts(
    launcher: Launcher, sharedDirectory: Path, workers: int,
) -> None:
    """
    popsrv shows what Dovecot showed (UIDL, numbers, LIST sizes); new mail
    gets fresh uids that no Dovecot UIDL can be mistaken for, even a
    message named like one; old messages keep theirs after DELE and QUIT,
    and after a restart.
    """
    needDovecot()
    root = sharedDirectory / "mail"
    dovecot = movedFromDovecot(root)
    server = start(launcher, root, workers)
    uidls, sizes = uidlAndList(server)
    assert uidls == dovecot["uidl"]
    assert sizes == dovecot["list"]

    client = login(server)
    client.dele(2)
    client.quit()
    maildir = root / "alice"
    delivered = deliver(str(maildir), b"Subject: after\n\nafter the move\n")
    # A file named like the deleted message's Dovecot UIDL, and one like a kept one.
    (maildir / "new" / dovecot["uidl"][2]).write_bytes(b"Subject: evil\n\nlooks old\n")
    (maildir / "new" / dovecot["uidl"][1]).write_bytes(b"Subject: evil\n\nlooks old\n")
    kept = {number: uid for number, uid in dovecot["uidl"].items() if number != 2}
    after = uidlAndList(server)[0]
    assert list(after.values())[:4] == list(kept.values())
    new = list(after.values())[4:]
    assert len(new) == 3 and delivered in new
    assert not set(new) & set(dovecot["uidl"].values())
    assert len(set(after.values())) == 7
    server.twistd.waitFor(r"new messages whose uids the file gives", timeout=10)

    server.twistd.stop()
    again = start(launcher, root, workers)
    assert uidlAndList(again)[0] == after


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """
    A Maildir root whose alice was served by Dovecot with each of the
    formats sites use, and the UIDL Dovecot showed with each (all before
    popsrv renames anything).
    """
    if not os.access(DOVECOT_POP3, os.X_OK):
        yield None, {}
        return
    directory = Path(tempfile.mkdtemp(prefix="popsrv-formats-"))
    os.chmod(directory, 0o755)
    try:
        root = directory / "mail"
        makeMaildir(root / "alice")
        shown = {text: dovecotListing(root / "alice", text) for text in FORMATS + MORE_FORMATS}
        yield root, shown
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Formats sites use (popsrv serves the first four in the tests), and more
# of Dovecot's modifiers and widths.
FORMATS = ["%v.%u", "%f", "%g", "UID%u-%v", "%08Xu%08Xv", "%Lf"]
MORE_FORMATS = ["%Uf", "%Rf", "%Mu", "%010u", "%.4f%u", "%-17.f", "%3.5Xv%u", "%%%u", "%XUv%u", "%0.3Tf%u"]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("uidlFormat", FORMATS[:4])
def test_uidlFormatVariants(launcher: Launcher, formats: tuple, uidlFormat: str, workers: int) -> None:
    """With --uidl-format, popsrv shows the UIDLs Dovecot showed with that pop3_uidl_format."""
    needDovecot()
    root, shown = formats
    server = start(launcher, root, workers, "--uidl-format", uidlFormat)
    assert uidlAndList(server)[0] == shown[uidlFormat]


def test_everyFormatExpandsAsDovecot(formats: tuple) -> None:
    """What each format makes from the dovecot-uidlist Dovecot wrote is what Dovecot showed."""
    needDovecot()
    from popsrv.store.maildir.dovecot import readUidlist
    from popsrv.store.uidlformat import parseUidlFormat

    root, shown = formats
    data = (root / "alice" / "dovecot-uidlist").read_bytes()
    for text, uidls in shown.items():
        assert readUidlist(data, parseUidlFormat(text)).uidls() == list(uidls.values()), text


@pytest.mark.parametrize("workers", [1, 2])
def test_savedUidlsAndPop3OrderWin(launcher: Launcher, sharedDirectory: Path, workers: int) -> None:
    """
    UIDLs Dovecot saved (pop3_save_uidl, or a migration's P records) are
    shown whatever the format; O records number messages first (checked
    against Dovecot's own numbering of the same file).
    """
    needDovecot()
    root = sharedDirectory / "mail"
    maildir = root / "alice"
    makeMaildir(maildir)
    saved = dovecotListing(maildir, "UID%u-%v", "pop3_save_uidl = yes")
    uidlist = maildir / "dovecot-uidlist"
    lines = uidlist.read_bytes().split(b"\n")
    assert all(b" P" in line for line in lines[1:] if line)
    # Messages 3 and 1 first, in that order, as a migration can say.
    lines[3] = lines[3].replace(b" :", b" O1 :", 1)
    lines[1] = lines[1].replace(b" :", b" O2 :", 1)
    uidlist.write_bytes(b"\n".join(lines))
    dovecot = dovecotListing(maildir, "%08Xu%08Xv")
    assert sorted(dovecot.values()) == sorted(saved.values())
    assert [dovecot[1], dovecot[2]] == [saved[3], saved[1]]
    server = start(launcher, root, workers)
    assert uidlAndList(server)[0] == dovecot


def test_mdFiveRefusedAsDovecotFailsWithIt(launcher: Launcher, sharedDirectory: Path, tmp_path: Path) -> None:
    """
    Dovecot's pop3 cannot serve %m on a Maildir (it ends the session);
    popsrv refuses --uidl-format %m at startup with one line saying why.
    """
    needDovecot()
    makeMaildir(sharedDirectory / "alice")
    session = dovecotSession(sharedDirectory / "alice", "%m", ["UIDL"])
    assert b"Header MD5 not found" in session.stderr
    result = launcher.run(["-n", "--pidfile=", "--logfile=-", "popsrv", "--auth", "memory:a:b",
                           "--listen", "tcp:0:interface=127.0.0.1", "--uidl-format", "%08Xm"], tmp_path)
    text = result.stdout.decode()
    assert result.returncode != 0
    assert "--uidl-format '%08Xm': %m (the MD5 of the message header) is refused" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("workers", [1, 2])
def test_courierUidlsKept(launcher: Launcher, tmp_path: Path, workers: int) -> None:
    """
    popsrv shows what Courier's pop3d showed (UID<n>-<uidvalidity> from its
    courierpop3dsizelist), in Courier's order; new mail gets fresh uids.
    """
    if courierPop3d() is None:
        pytest.skip("Courier's pop3d is not unpacked (.ci/run unpacks it into /opt/popsrv-courier)")
    root = tmp_path / "mail"
    maildir = root / "alice"
    makeMaildir(maildir)
    # Names Courier orders otherwise than popsrv: by name, not microseconds.
    (maildir / "new" / "1700000001.M99P1.mx.example").write_bytes(b"Subject: five\n\nfive\n")
    first = runCourier(maildir, ["UIDL"])
    assert first.returncode == 0, first.stderr
    (maildir / LATE[0]).write_bytes(LATE[1])
    session = runCourier(maildir, ["UIDL", "LIST"])
    courier, sizes = listing(session.stdout), listing(session.stdout, "LIST")
    assert all(uid.startswith("UID") for uid in courier.values()) and len(courier) == 6
    server = start(launcher, root, workers)
    uidls, served = uidlAndList(server)
    assert uidls == courier
    # Courier counts a CR for every line, even one that has it already: its
    # LIST overstates the message stored with CRLF (by its 3 lines).
    differ = {number: int(sizes[number]) - int(served[number]) for number in sizes if sizes[number] != served[number]}
    assert list(differ.values()) == [3]
    delivered = deliver(str(maildir), b"Subject: after\n\nafter\n")
    after = uidlAndList(server)[0]
    assert list(after.values()) == [*courier.values(), delivered]


def test_garbageUidlistNeverBreaksALogin(launcher: Launcher, tmp_path: Path) -> None:
    """A dovecot-uidlist of garbage: the login works, with popsrv's own UIDLs, and the log says why."""
    root = tmp_path / "mail"
    maildir = root / "alice"
    makeMaildir(maildir)
    (maildir / "dovecot-uidlist").write_bytes(b"\xff" + os.urandom(50_000))
    server = start(launcher, root, 1)
    uidls: List[str] = list(uidlAndList(server)[0].values())
    assert len(uidls) == len(set(uidls)) == 4
    server.twistd.waitFor(r"dovecot-uidlist is not used .*: its version", timeout=10)
    client: poplib.POP3 = login(server)
    client.quit()
