"""
Tests for L{popsrv.app.secret} and C{--secret-file}: the secret is made
once, kept private, refused when unfit, and keeps the placeholder SCRAM
salts of unknown users the same across restarts.
"""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from twisted.python import usage

from popsrv.app.options import Options
from popsrv.app.secret import (
    SECRET_OCTETS,
    SecretError,
    defaultSecretPath,
    defaultStateDirectory,
    deriveKey,
    loadSecret,
)
from tests.support.servers import LISTEN_LOCAL

if TYPE_CHECKING:
    from tests.support.servers import Launcher


def test_madeOnceAndKept(tmp_path: Path) -> None:
    """The first load makes a private file; later loads read it."""
    path = tmp_path / "state" / "popsrv" / "secret"
    first = loadSecret(str(path))
    assert len(first) == SECRET_OCTETS
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert loadSecret(str(path)) == first
    assert deriveKey(first, "a") != deriveKey(first, "b")
    assert len(deriveKey(first, "a")) == 32


@pytest.mark.parametrize("kind", ["symlink", "readable", "short", "directory", "fifo"])
def test_unfitSecretsAreRefused(tmp_path: Path, kind: str) -> None:
    """
    A link, a file others can read, a short file, a directory or a FIFO
    is refused (never followed, never blocked on).
    """
    path = tmp_path / "secret"
    if kind == "symlink":
        target = tmp_path / "elsewhere"
        target.write_bytes(b"x" * 64)
        target.chmod(0o600)
        path.symlink_to(target)
    elif kind == "readable":
        path.write_bytes(b"x" * 64)
        path.chmod(0o640)
    elif kind == "short":
        path.write_bytes(b"x" * 8)
        path.chmod(0o600)
    elif kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path, 0o600)
    with pytest.raises(SecretError):
        loadSecret(str(path))


def test_defaultPath(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """
    A service manager's state directory comes first; else root's secret is
    under /var/lib, a user's under their state directory.
    """
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert defaultSecretPath(0) == f"{tmp_path}/a/secret"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert defaultSecretPath(0) == "/var/lib/popsrv/secret"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert defaultSecretPath(1000) == str(tmp_path / "popsrv" / "secret")


def test_defaultStateDirectory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """
    The state directory (the secret's, and the mbox store's files) is the
    service manager's first, else /var/lib/popsrv for root, else the user's.
    """
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert defaultStateDirectory(1000) == f"{tmp_path}/a"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert defaultStateDirectory(0) == "/var/lib/popsrv"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert defaultStateDirectory(1000) == str(tmp_path / "popsrv")
    assert defaultSecretPath(1000) == os.path.join(defaultStateDirectory(1000), "secret")


def test_optionsMakeTheSecretLast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A command line refused for another reason leaves no secret behind; an
    accepted one makes it in the state directory.
    """
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    with pytest.raises(usage.UsageError, match="--plaintext-auth"):
        Options().parseOptions(["--auth", "memory:alice:pw", "--plaintext-auth", "sometimes"])
    assert not (tmp_path / "secret").exists()
    options = Options()
    options.parseOptions(["--auth", "memory:alice:pw"])
    assert options["secret"] == (tmp_path / "secret").read_bytes()


def test_theParentOfForkedWorkersWipesTheSecret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With --workers, the parent wipes the secret once it derived what it
    needs, before it forks the workers, which must not hold it; one
    process keeps it.
    """
    from twisted.internet.task import Clock

    from popsrv.app.service import makeService

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    kept = (tmp_path / "secret")
    for workers, wiped in (("1", False), ("2", True)):
        options = Options()
        options.parseOptions(["--auth", "memory:alice:pw", "--workers", workers, "--listen", LISTEN_LOCAL])
        secret = options["secret"]
        assert isinstance(secret, bytearray) and secret == kept.read_bytes()
        makeService(options, Clock())
        if wiped:
            assert options["secret"] is None
            assert secret == bytes(len(secret))
        else:
            assert options["secret"] == kept.read_bytes()


def test_optionsRefuseAnUnfitSecret(tmp_path: Path) -> None:
    """--secret-file naming something unfit is a one-line usage error."""
    options = Options()
    with pytest.raises(usage.UsageError, match="--secret-file: the secret file .* is not a regular file"):
        options.parseOptions(["--auth", "memory:alice:pw", "--secret-file", str(tmp_path)])


def placeholderSalt(port: int, user: bytes) -> bytes:
    """The salt a running server sends C{user} in SCRAM-SHA-256."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        first = b"n,,n=" + user + b",r=abcdefghijklmnop"
        sock.sendall(b"AUTH SCRAM-SHA-256 " + base64.b64encode(first) + b"\r\n")
        challenge = reader.readline()
        assert challenge.startswith(b"+ ")
        sock.sendall(b"*\r\n")
        assert reader.readline().startswith(b"-ERR")
    fields = dict(item.split(b"=", 1) for item in base64.b64decode(challenge[2:]).split(b","))
    return fields[b"s"]


@pytest.mark.parametrize("workers", [1, 2])
def test_unknownUsersKeepTheirSaltsAcrossRestarts(launcher: Launcher, tmp_path: Path, workers: int) -> None:
    """
    An unknown user's SCRAM salt is the same after a restart with the same
    secret (as a real user's stored salt is), and differs with another.
    """
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:{PLAIN}secret\n")
    salts = []
    for secret in ("one", "one", "two"):
        args = ["--listen", LISTEN_LOCAL, "--maildir-root", str(tmp_path / "mail"), "--auth", f"passwd-file:{passwd}",
                "--secret-file", str(tmp_path / secret), "--workers", str(workers)]
        process = launcher.twistd(args, tmp_path)
        port = process.waitListening()
        salts.append([placeholderSalt(port, b"nobody") for _ in range(3)])
        process.stop()
    assert len(set(salts[0])) == 1
    assert salts[0] == salts[1]
    assert salts[0][0] != salts[2][0]
