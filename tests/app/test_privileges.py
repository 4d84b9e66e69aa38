"""
Tests of the warning popsrv logs when it serves as root (L{popsrv.app.privileges}):
the predicate and the service directly, and real twistd servers started with and
without C{--uid}.
"""

from __future__ import annotations

import grp
import os
import poplib
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from popsrv.app.options import Options
from popsrv.app.privileges import RootWarning, runningAsRoot
from popsrv.app.service import makeService
from tests.support.servers import HOST, Launcher, TwistdProcess

ROOT_WARNING = r"\[popsrv\.app\.privileges#warn\] popsrv (and its \d+ workers serve|serves) as root"
needsRoot = pytest.mark.skipif(os.geteuid() != 0, reason="needs to run as root")


def test_runningAsRootIsEffectiveUserZero() -> None:
    """
    The predicate looks at the effective user id, by default the
    process's own.
    """
    assert runningAsRoot(lambda: 0)
    assert not runningAsRoot(lambda: 65534)
    assert runningAsRoot() == (os.geteuid() == 0)


def test_theWarningIsAStableEvent() -> None:
    """
    Started as root, the service logs one warning, event
    C{running-as-root}, telling how to run unprivileged; started as
    another user, nothing.
    """
    with capturedLogs() as events:
        RootWarning(geteuid=lambda: 0).startService()
        RootWarning(workers=2, geteuid=lambda: 0).startService()
        RootWarning(geteuid=lambda: 1000).startService()
    warnings = [e for e in events if e.get("event") == "running-as-root"]
    assert len(warnings) == 2
    assert all(e["log_level"].name == "warn" for e in warnings)
    assert [e["workers"] for e in warnings] == [0, 2]
    text = warnings[1]["log_format"].format(**warnings[1])
    assert text.startswith("popsrv and its 2 workers serve as root,")
    assert "--uid and --gid" in text and "User=" in text


@pytest.mark.parametrize("args, workers", [([], 0), (["--workers", "3"], 3)])
def test_makeServiceWarnsOnceInTheParent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args, workers) -> None:
    """
    The service twistd runs warns as it starts (the worker pool's parent
    for its workers, which have its identity); a worker's own service
    does not.
    """
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    options = Options()
    # With geteuid patched to 0, the default secret would be root's
    # /var/lib/popsrv/secret, which another user cannot make.
    options.parseOptions([
        "--auth", "memory:a:b", "--maildir-root", str(tmp_path), "--secret-file", str(tmp_path / "secret"), *args,
    ])
    warnings = [s for s in makeService(options, MemoryReactorClock()) if isinstance(s, RootWarning)]
    assert [w.workers for w in warnings] == [workers]
    inWorker = makeService(options, MemoryReactorClock(), endpointFor=lambda description: None)
    assert not [s for s in inWorker if isinstance(s, RootWarning)]


def greeted(port: int) -> bytes:
    """
    The greeting of a server, which it sends once it has started.
    """
    client = poplib.POP3(HOST, port, timeout=20)
    try:
        return client.getwelcome()
    finally:
        client.quit()


@needsRoot
def test_aServerStartedAsRootWarns(launcher: Launcher) -> None:
    """
    twistd without --uid serves as root: the log says so, once.
    """
    server = launcher.popsrv()
    server.twistd.waitFor(ROOT_WARNING)
    assert greeted(server.port).startswith(b"+OK")
    server.twistd.stop()
    assert len([line for line in server.twistd.lines if "serves as root" in line]) == 1


@needsRoot
def test_workersAreWarnedAboutOnceByTheParent(launcher: Launcher) -> None:
    """
    With --workers, which inherit the parent's identity, the parent warns
    once for all of them.
    """
    server = launcher.popsrv("--workers", "2")
    for index in range(2):
        server.twistd.waitFor(rf"worker {index}\] worker ready")
    assert greeted(server.port).startswith(b"+OK")
    server.twistd.stop()
    warnings = [line for line in server.twistd.lines if "as root" in line]
    assert len(warnings) == 1 and "popsrv and its 2 workers serve as root" in warnings[0]


@needsRoot
def test_aServerThatDroppedRootDoesNotWarn(launcher: Launcher, tmp_path: Path) -> None:
    """
    twistd -u nobody -g nogroup binds as root, then serves as nobody:
    no warning.
    """
    try:
        user, group = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no user nobody or group nogroup here")
    process: TwistdProcess = launcher.twistd(
        ["--listen", "tcp:0:interface=127.0.0.1", "--auth", "memory:alice:secret", "--maildir-root", str(tmp_path)],
        tmp_path, twistdArgs=["-u", str(user), "-g", str(group)],
    )
    port = process.waitListening()
    process.waitFor(rf"set uid/gid {user}/{group}")
    assert greeted(port).startswith(b"+OK")
    process.stop()
    assert "as root" not in process.output


@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
def test_everyWorkerServesUnprivileged(tmp_path_factory: pytest.TempPathFactory, spawn: bool) -> None:
    """
    twistd -u nobody -g nogroup popsrv --workers 2: the parent binds as
    root, then it and every worker run as nobody, and serve a login; so do
    workers started as Python processes of their own (--spawn-workers), for
    which the interpreter must be one that nobody can run: .ci/run makes
    one from the system's Python and names it in
    POPSRV_UNPRIVILEGED_PYTHON.
    """
    import re
    import subprocess
    import time

    python = os.environ.get("POPSRV_UNPRIVILEGED_PYTHON")
    if not python or os.geteuid() != 0:
        pytest.skip("needs root and POPSRV_UNPRIVILEGED_PYTHON, a Python nobody can run (.ci/run makes one)")
    user, group = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    # Outside pytest's private (mode 0700) temporary directory: nobody must
    # reach the mail and the passwd file.
    base = Path(tempfile.mkdtemp(prefix="popsrv-unprivileged-"))
    try:
        base.chmod(0o755)
        mail = base / "mail"
        mail.mkdir()
        os.chown(mail, user, group)
        passwd = base / "passwd"
        passwd.write_text("alice:secret\n")
        passwd.chmod(0o644)
        twistd = os.path.join(os.path.dirname(python), "twistd")
        process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile=-", "-u", str(user), "-g", str(group), "popsrv",
             "--listen", "tcp:0:interface=127.0.0.1", "--auth", f"file:{passwd}", "--maildir-root", str(mail),
             "--workers", "2", "--secret-file", str(base / "secret"), *(["--spawn-workers"] if spawn else [])],
            cwd=str(base), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        )
        output = []
        try:
            assert process.stdout is not None
            deadline = time.monotonic() + 60
            while sum("worker ready" in line for line in output) < 2:
                line = process.stdout.readline().decode("utf-8", "replace")
                assert line and time.monotonic() < deadline, "".join(output)
                output.append(line)
            text = "".join(output)
            port = int(re.search(r"popsrv listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
            started = re.findall(r"worker \d started \(pid (\d+), (forked|a new process)", text)
            assert [how for _, how in started] == ["a new process" if spawn else "forked"] * 2
            pids = [int(pid) for pid, _ in started]
            for pid in [process.pid, *pids]:
                status = Path(f"/proc/{pid}/status").read_text()
                uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE).group(1).split()  # type: ignore[union-attr]
                gids = re.search(r"^Gid:\s+(.*)$", status, re.MULTILINE).group(1).split()  # type: ignore[union-attr]
                assert uids == [str(user)] * 4 and gids == [str(group)] * 4, (pid, uids, gids)
            client = poplib.POP3(HOST, port, timeout=30)
            client.user("alice")
            assert client.pass_("secret").startswith(b"+OK alice has 0 messages")
            client.quit()
            assert (mail / "alice" / "cur").stat().st_uid == user
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
