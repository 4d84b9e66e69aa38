"""
--mbox on the command line: parsed and refused with one line as the other
options are, handed to the service (with workers too), and checked by
C{python -m popsrv check}.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from popsrv.app.listening import ListeningService
from popsrv.app.options import Options
from popsrv.app.service import makeService
from popsrv.store.realm import MboxRealm
from tests.app.test_check import Config, needsRoot, runCheck, withoutRootWarning
from tests.support.servers import LISTEN_LOCAL, runTwistd


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--auth", "memory:alice:secret", *args])
    return options


def test_mboxOption(tmp_path: Path, stateDirectory: Path) -> None:
    """
    --mbox gives the service an MboxRealm with the template, whose state is
    in the state directory; no Maildir option is set then.
    """
    options = parse("--mbox", str(tmp_path / "%u"))
    assert options["mbox-template"].text == str(tmp_path / "%u")
    assert options["maildir-template"] is None and options["maildir-root"] is None
    service = makeService(options, reactor=MemoryReactorClock())
    service.startService()
    try:
        [listener] = [child for child in service.services if isinstance(child, ListeningService)]
        realm = listener.factory.portal.realm
        assert isinstance(realm, MboxRealm)
        assert realm.stateDirectory == str(stateDirectory)
        maildrop = realm.maildropFor("alice@Example.COM")
        assert maildrop.path == str(tmp_path / "alice@Example.COM")
        assert maildrop.name == "alice@example.com"
    finally:
        service.stopService()


@pytest.mark.parametrize("args, message", [
    (["--mbox", "/var/mail/%u", "--maildir", "/srv/%u"],
     "give --mbox TEMPLATE or --maildir, not both: popsrv serves one kind of maildrop"),
    (["--mbox", "/var/mail/%u", "--maildir-root", "/srv"],
     "give --mbox TEMPLATE or --maildir-root, not both: popsrv serves one kind of maildrop"),
    (["--mbox", "/var/mail/%u", "--uidl-format", "%v.%u"],
     "--uidl-format is for Maildirs moved from Dovecot: --mbox spools take their UIDLs from qpopper's X-UIDL "
     "headers or their content"),
    (["--mbox", "/var/mail/%x"], "--mbox: mbox template '/var/mail/%x' has %x: use %u (login), %n (local part), "
                                 "%d (domain) or %% (a literal %)"),
    (["--mbox", "/var/mail/all"], "--mbox: mbox template '/var/mail/all' needs %u or %n, so that users get their "
                                  "own mbox spools"),
    (["--mbox", "/var/mail/%n.%d"], "--mbox: mbox template '/var/mail/%n.%d' has %n and %d without a / between "
                                    "them, so two logins could share a mbox spool"),
])
def test_badMboxOptions(args, message) -> None:
    """--mbox with a Maildir option, or a bad template, is a usage error of one line."""
    with pytest.raises(usage.UsageError) as raised:
        parse(*args)
    assert str(raised.value) == message


def test_mboxWithDemoIsRefused() -> None:
    """--demo serves its own Maildir: --mbox with it is a usage error."""
    options = Options()
    with pytest.raises(usage.UsageError) as raised:
        options.parseOptions(["--demo", "--mbox", "/var/mail/%u"])
    assert str(raised.value) == "--demo serves its own Maildir in ./popsrv-demo/: give --demo or --mbox, not both"


def test_twistdRefusesMboxWithMaildirInOneLine(tmp_path: Path) -> None:
    """Under twistd, --mbox with --maildir-root stops the start with the one-line reason, no traceback."""
    result = runTwistd(["-n", "--pidfile=", "--logfile=-", "popsrv", "--listen", LISTEN_LOCAL,
                        "--auth", "memory:alice:secret", "--mbox", str(tmp_path / "%u"),
                        "--maildir-root", str(tmp_path)], tmp_path)
    text = result.stdout.decode()
    assert result.returncode != 0
    assert text.splitlines()[-1].endswith(
        ": give --mbox TEMPLATE or --maildir-root, not both: popsrv serves one kind of maildrop"
    ), text
    assert "Traceback" not in text and "popsrv listening" not in text


def test_workersShareTheParentsStateDirectory(tmp_path: Path, stateDirectory: Path) -> None:
    """The parent of --workers hands its state directory to the workers, which may run as another user."""
    from popsrv.app.workers import WorkerPool

    options = parse("--mbox", str(tmp_path / "%u"), "--workers", "2", "--listen", LISTEN_LOCAL)
    service = makeService(options, reactor=MemoryReactorClock())
    [pool] = [child for child in service if isinstance(child, WorkerPool)]  # type: ignore[attr-defined]
    assert pool.environment == {"STATE_DIRECTORY": str(stateDirectory)}
    assert "--mbox" in pool.arguments


def mboxArgs(config: Config, template: str) -> list:
    """
    The good configuration of the check's tests, with spools instead of a
    Maildir root.
    """
    args = config.args(listen=[LISTEN_LOCAL])
    index = args.index("--maildir-root")
    return args[:index] + ["--mbox", template] + args[index + 2:]


def test_checkAGoodMboxConfiguration(tmp_path: Path) -> None:
    """python -m popsrv check with --mbox: the ok line says where the spools are."""
    config = Config(tmp_path)
    spools = tmp_path / "spools"
    spools.mkdir()
    checked = runCheck(*mboxArgs(config, str(spools / "%u")), cwd=tmp_path)
    assert checked.status == 0, checked.text
    assert f"serves mbox spools under {spools};" in checked.out[0]
    assert withoutRootWarning(checked.warnings) == []


def test_checkMissingSpoolDirectoryAndUnusableStateDirectory(tmp_path: Path, monkeypatch) -> None:
    """
    A spool directory that is not there, and a state directory that cannot
    be made, are problems.
    """
    config = Config(tmp_path)
    template = str(tmp_path / "nowhere" / "%u")
    checked = runCheck(*mboxArgs(config, template), cwd=tmp_path)
    assert checked.status == 1
    assert checked.problems == [
        f"--mbox {template}: {tmp_path}/nowhere is not a directory, so there are no spools to serve"
    ], checked.text
    (tmp_path / "nowhere").mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("STATE_DIRECTORY", str(blocker / "state"))
    checked = runCheck(*mboxArgs(config, template), cwd=tmp_path)
    assert checked.status == 1
    assert checked.problems == [
        f"--mbox {template}: the state directory {blocker}/state (session locks, journals, seen marks): "
        f"cannot be made: {blocker} is not a directory (set STATE_DIRECTORY, or systemd's StateDirectory=)"
    ], checked.text


@needsRoot
def test_checkASpoolDirectoryTheServingUserCannotWrite(sharedDirectory: Path, monkeypatch) -> None:
    """
    A spool directory the serving user may not make files in is a warning:
    popsrv then locks with fcntl alone.
    """
    config = Config(sharedDirectory)
    config.passwd.chmod(0o644)
    os.chown(config.key, 65534, -1)
    spools = sharedDirectory / "spools"
    spools.mkdir(mode=0o755)
    state = sharedDirectory / "state"
    state.mkdir(mode=0o755)
    os.chown(state, 65534, -1)
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    checked = runCheck("-u", "nobody", *mboxArgs(config, str(spools / "%u")), cwd=sharedDirectory)
    assert checked.status == 0, checked.text
    assert checked.warnings == [
        f"--mbox {spools}/%u: user nobody cannot make directories in {spools} (root:root, mode 0755), so popsrv "
        "cannot make dotlocks there: it locks spools with fcntl alone (run it in the group that owns the "
        "directory, such as mail)"
    ], checked.text
