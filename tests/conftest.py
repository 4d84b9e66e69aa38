"""
The tests' fixtures: popsrv servers under twistd, PostgreSQL, the reactor in
a thread.  What they run lives in L{tests.support}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.pgserver import PostgresServer, canInstall, findBinaries
from tests.support.servers import Launcher, Popsrv, ReactorThread


@pytest.fixture(scope="session", autouse=True)
def stateDirectory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """
    A state directory for the whole run (as systemd's StateDirectory=
    gives), so that servers and option parsing keep their secret there
    rather than in this machine's /var/lib/popsrv or home.
    """
    import os

    directory = tmp_path_factory.mktemp("state")
    previous = os.environ.get("STATE_DIRECTORY")
    os.environ["STATE_DIRECTORY"] = str(directory)
    yield directory
    if previous is None:
        del os.environ["STATE_DIRECTORY"]
    else:
        os.environ["STATE_DIRECTORY"] = previous


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """
    Start popsrv servers for one test; they are stopped when it ends.
    """
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stopAll()


@pytest.fixture
def server(launcher: Launcher) -> Popsrv:
    """
    A running popsrv for one test, users alice (secret) and bob (hunter2),
    with an empty Maildir root.
    """
    return launcher.popsrv()


@pytest.fixture(scope="module")
def moduleLauncher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """
    Start popsrv servers shared by the tests of a module.
    """
    launcher = Launcher(tmp_path_factory.mktemp("popsrv"))
    try:
        yield launcher
    finally:
        launcher.stopAll()


@pytest.fixture
def sharedDirectory() -> Iterator[Path]:
    """
    A new directory that every user can enter, with every directory above
    it (pytest's own temporary directories are its user's alone); removed
    afterwards.
    """
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="popsrv-shared-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """
    A real PostgreSQL server on 127.0.0.1 for the whole test session, from
    the machine's C{postgresql} package, in a temporary directory; stopped
    (by PID) and removed at the end.
    """
    binaries = findBinaries()
    if binaries is None:
        if not canInstall():
            pytest.skip("no PostgreSQL server binaries, and this machine has no Debian packages to install them from")
        pytest.fail("PostgreSQL is not installed: run .ci/run, or apt-get install postgresql")
    server = PostgresServer(binaries)
    try:
        server.initialise()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def reactorThread() -> Iterator[ReactorThread]:
    """
    The global reactor running in a thread for the rest of the session (a
    reactor cannot be started twice).
    """
    running = ReactorThread()
    running.start()
    try:
        yield running
    finally:
        running.stop()
