"""
The POP3 servers sites move from, run on a Maildir as their users last saw
it, for the tests of Maildirs moved to popsrv: Dovecot's pop3 (Debian's
C{dovecot-pop3d}) and Courier's C{courierpop3d} (Debian's C{courier-pop}),
each started pre-authenticated on standard input and output, as their own
login processes start them, with nothing of the machine's configuration.

Dovecot refuses to give root access to mail: when the tests run as root, it
runs as C{nobody}, and the Maildir (in a directory every user can enter)
is handed to C{nobody} first.  Courier's packages conflict with
C{dovecot-pop3d} and would bring a mail transport agent along, so they are
unpacked (C{dpkg -x}, as C{.ci/run} does), not installed, into
L{COURIER_ROOT}.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

__all__ = ["COURIER_ROOT", "DOVECOT_POP3", "courierPop3d", "dovecotSession", "handToDovecot", "listing", "runCourier"]

DOVECOT_POP3 = "/usr/lib/dovecot/pop3"
COURIER_ROOT = os.environ.get("POPSRV_COURIER_ROOT", "/opt/popsrv-courier")
COURIER_POP3D = "usr/lib/courier/courier/courierpop3d"
TIMEOUT = 60.0

DOVECOT_CONFIG = """\
base_dir = {directory}/run
state_dir = {directory}/state
log_path = /dev/stderr
ssl = no
protocols = pop3
first_valid_uid = 0
mail_location = maildir:{maildir}
pop3_uidl_format = {uidlFormat}
{extra}
"""


def _owner() -> Optional[str]:
    """The user Dovecot runs as: C{nobody} for root, else none of its own."""
    return "nobody" if os.geteuid() == 0 else None


def handToDovecot(top: Path) -> None:
    """Let the user Dovecot runs as own everything below C{top} (when the tests run as root)."""
    owner = _owner()
    if owner is None:
        return
    entry = pwd.getpwnam(owner)
    for directory, subdirectories, files in os.walk(top):
        for name in [directory, *(os.path.join(directory, each) for each in subdirectories + files)]:
            os.lchown(name, entry.pw_uid, entry.pw_gid)


def dovecotSession(
    maildir: Path, uidlFormat: str, commands: Sequence[str], extra: str = "",
) -> subprocess.CompletedProcess:
    """
    Run one session of Dovecot's pop3 on C{maildir} with the
    C{pop3_uidl_format} C{uidlFormat} (and more settings in C{extra}):
    send C{commands} and QUIT; return the finished process (its output
    and its log).
    """
    directory = Path(tempfile.mkdtemp(prefix="popsrv-dovecot-"))
    os.chmod(directory, 0o755)
    config = directory / "dovecot.conf"
    config.write_text(DOVECOT_CONFIG.format(directory=directory, maildir=maildir, uidlFormat=uidlFormat, extra=extra))
    handToDovecot(maildir)
    handToDovecot(directory)
    owner = _owner()
    try:
        return subprocess.run(
            [DOVECOT_POP3, "-c", str(config)],
            input="".join(f"{command}\r\n" for command in [*commands, "QUIT"]).encode("ascii"),
            env={"USER": owner or pwd.getpwuid(os.geteuid()).pw_name, "HOME": str(directory), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            timeout=TIMEOUT,
            user=owner,
            group="nogroup" if owner else None,
            extra_groups=[] if owner else None,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def listing(output: bytes, command: str = "UIDL") -> Dict[int, str]:
    """
    The multi-line reply of a session's UIDL (its first multi-line reply)
    or LIST (its second), as message number to uid or size.
    """
    text = output.decode("ascii", "replace")
    block = text.split("\r\n.\r\n")[0 if command == "UIDL" else 1]
    lines = block.split("\r\n")
    start = max(index for index, line in enumerate(lines) if line.startswith("+OK"))
    rows = [re.fullmatch(r"(\d+) (\S+)", line) for line in lines[start + 1:]]
    assert rows and all(rows), f"no {command} listing in {text!r}"
    return {int(row.group(1)): row.group(2) for row in rows if row}


def courierPop3d() -> Optional[str]:
    """The unpacked C{courierpop3d}, or C{None}."""
    path = os.path.join(COURIER_ROOT, COURIER_POP3D)
    return path if os.access(path, os.X_OK) else None


def runCourier(maildir: Path, commands: Sequence[str]) -> subprocess.CompletedProcess:
    """
    Run one session of Courier's pop3d on C{maildir}: send C{commands} and
    QUIT; return the finished process.
    """
    binary = courierPop3d()
    assert binary is not None
    libraries = [os.path.join(COURIER_ROOT, "usr/lib"), os.path.join(COURIER_ROOT, "usr/lib/x86_64-linux-gnu")]
    return subprocess.run(
        [binary, str(maildir)],
        input="".join(f"{command}\r\n" for command in [*commands, "QUIT"]).encode("ascii"),
        env={"LD_LIBRARY_PATH": os.pathsep.join(libraries), "PATH": "/usr/bin:/bin", "AUTHENTICATED": "alice"},
        capture_output=True,
        timeout=TIMEOUT,
        cwd=str(maildir),
    )
