"""
Whether a user may use files and directories, computed from their modes,
on real files; and the identity twistd's -u and -g give.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from popsrv.app.access import (
    Identity,
    currentIdentity,
    identityFor,
    readableBy,
    readableFileProblem,
    unusableDirectory,
    unwritableDirectory,
)

NOBODY = Identity(65534, frozenset({65534}), "nobody")
ROOT = Identity(0, frozenset({0}), "root")


def test_identityLikeTwistd() -> None:
    """
    Without -u and -g, this process's identity; -u alone takes the user's
    own group and the groups it is a member of; -g alone keeps the user.
    """
    assert identityFor() == currentIdentity()
    assert currentIdentity().uid == os.geteuid()
    nobody = pwd.getpwnam("nobody")
    assert identityFor("nobody") == Identity(nobody.pw_uid, frozenset({nobody.pw_gid}), "nobody")
    assert identityFor(str(nobody.pw_uid)).uid == nobody.pw_uid
    group = grp.getgrgid(nobody.pw_gid).gr_name
    withGroup = identityFor(None, group)
    assert withGroup.uid == os.geteuid() and nobody.pw_gid in withGroup.groups
    with pytest.raises(ValueError, match="no such user: 'no-such-user-here'"):
        identityFor("no-such-user-here")
    with pytest.raises(ValueError, match="no such group: 'no-such-group-here'"):
        identityFor(None, "no-such-group-here")


def test_readable(sharedDirectory: Path) -> None:
    """
    The owner's bits count for the owner, the group's for its members, the
    others' for the rest; a directory on the way must let them search it.
    """
    tmp_path = sharedDirectory
    path = tmp_path / "file"
    path.write_text("")
    if os.geteuid() == 0:
        os.chown(path, 4242, 4343)  # an owner other than root, whom modes do not bind
    status = path.stat()
    owner = Identity(status.st_uid, frozenset(), "owner")
    member = Identity(status.st_uid + 1, frozenset({status.st_gid}), "member")
    stranger = Identity(status.st_uid + 2, frozenset(), "stranger")
    path.chmod(0o640)
    assert readableBy(str(path), owner) is None and readableBy(str(path), member) is None
    assert readableBy(str(path), stranger).startswith(f"user stranger cannot read {path} (")
    assert readableBy(str(path), ROOT) is None
    path.chmod(0o044)
    assert readableBy(str(path), owner).startswith("user owner cannot read")
    assert readableBy(str(path), stranger) is None
    os.chmod(tmp_path, 0o700)
    assert readableBy(str(path), stranger) == (
        f"user stranger cannot reach it: no search permission on {tmp_path} "
        f"({pwd.getpwuid(tmp_path.stat().st_uid).pw_name}:{grp.getgrgid(tmp_path.stat().st_gid).gr_name}, mode 0700)"
    )
    assert readableBy(str(tmp_path / "missing"), owner) == "no such file"


def test_readableFileProblem(tmp_path: Path) -> None:
    """
    This process's own view: missing, a directory, not a regular file, or
    fine.
    """
    path = tmp_path / "file"
    assert readableFileProblem(str(path)) == "no such file"
    assert readableFileProblem(str(path / "below")) == "no such file"
    path.write_text("")
    assert readableFileProblem(str(path)) is None
    assert readableFileProblem(str(path / "below")) == "no such file"
    assert readableFileProblem(str(tmp_path)) == "a directory, not a file"
    os.mkfifo(tmp_path / "fifo")
    assert readableFileProblem(str(tmp_path / "fifo")) == "not a regular file"


def test_directories(sharedDirectory: Path) -> None:
    """
    A directory is usable if it can be entered, or made; writable if
    entries can be made in it (a missing one, once made, is its maker's).
    """
    base = sharedDirectory / "base"
    assert unusableDirectory(str(base / "a" / "b"), ROOT) is None
    assert unwritableDirectory(str(base), ROOT) is None
    base.mkdir(mode=0o755)
    stranger = Identity(base.stat().st_uid + 1, frozenset(), "stranger")
    assert unusableDirectory(str(base), stranger) is None
    assert unwritableDirectory(str(base), stranger).startswith(f"user stranger cannot make directories in {base} (")
    assert unusableDirectory(str(base / "new"), stranger).startswith(
        f"does not exist, and user stranger cannot make directories in {base} ("
    )
    base.chmod(0o777)
    assert unusableDirectory(str(base / "new" / "deeper"), stranger) is None
    assert unwritableDirectory(str(base), stranger) is None
    (base / "file").write_text("")
    assert unusableDirectory(str(base / "file"), stranger) == "not a directory"
    blocked = unusableDirectory(str(base / "file" / "x" / "y"), stranger)
    assert blocked == f"cannot be made: {base}/file is not a directory"
    base.chmod(0o700)
    assert unusableDirectory(str(base / "new"), stranger).startswith(
        "does not exist, and user stranger cannot make directories in"
    )
    base.chmod(0o755)
