"""
The credential backend example of README.rst, checked: the package in
examples/popsrv-example-checker installs with pip, twistd finds its checker
plugin at once, C{--auth example:USERS.json} logs users in over real TCP,
and the code README.rst shows is the example's own.

The package is installed into the environment that runs the tests (twistd
runs from it) and uninstalled at the end, unless it was installed before.
It is built with that environment's setuptools (the C{test} extra asks for
one that builds wheels by itself), so no network is needed; if setuptools
cannot, pip builds it in isolation, fetching setuptools from the index.
"""

from __future__ import annotations

import base64
import hashlib
import json
import poplib
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterator, List

import pytest

from popsrv.store.maildir import deliver
from tests.support.servers import LISTEN_LOCAL, REPO_ROOT, Launcher

EXAMPLE = REPO_ROOT / "examples" / "popsrv-example-checker"
DISTRIBUTION = "popsrv-example-checker"
PIP_TIMEOUT = 300


def canBuildOffline() -> bool:
    """
    Whether this environment's setuptools can build a wheel without
    anything else (setuptools 70.1 and later; older ones need C{wheel}).
    """
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if numbers >= (70, 1):
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return True


def pip(*args: str) -> None:
    """
    Run this environment's pip; it must succeed.
    """
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PIP_TIMEOUT,
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def isInstalled() -> bool:
    """
    Whether the example is installed in this environment.
    """
    try:
        metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def installedExample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """
    Install the example package (a copy of it, so that building leaves
    nothing in the checkout) for the tests of this module.
    """
    wasInstalled = isInstalled()
    source = tmp_path_factory.mktemp("example") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    offline = ["--no-build-isolation", "--no-index"] if canBuildOffline() else []
    pip("install", "--quiet", "--no-deps", "--force-reinstall", *offline, str(source))
    try:
        yield
    finally:
        if not wasInstalled:
            pip("uninstall", "--quiet", "--yes", DISTRIBUTION)


def storedHash(password: str, salt: str = "c2FsdHNhbHQ=", iterations: int = 1000) -> str:
    """
    The stored form the example documents, made independently of it:
    pbkdf2_sha256$ITERATIONS$SALT$base64(PBKDF2-HMAC-SHA256).
    """
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("ascii"), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode('ascii')}"


def test_helpAuthListsTheExample(installedExample: None, launcher: Launcher, tmp_path: Path) -> None:
    """
    Right after pip installs it, twistd popsrv --help-auth lists the
    example checker, and --help-auth-type explains it.
    """
    listing = launcher.run(["popsrv", "--help-auth"], tmp_path)
    assert listing.returncode == 0, listing.stdout
    assert re.search(rb"^\s*example\s+The path of the JSON file", listing.stdout, re.M), listing.stdout.decode()
    detail = launcher.run(["popsrv", "--help-auth-type", "example"], tmp_path)
    assert b"PBKDF2" in detail.stdout, detail.stdout.decode()


def test_exampleCheckerLogsIn(installedExample: None, launcher: Launcher, tmp_path: Path) -> None:
    """
    twistd popsrv --auth example:users.json serves alice@example.com with
    her password, and refuses a wrong one and an unknown user alike.
    """
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice@example.com": storedHash("correct horse")}), encoding="utf-8")
    message = b"From: bob@example.org\r\nSubject: hello\r\n\r\nChecked by a plugin.\r\n"
    deliver(str(tmp_path / "vmail" / "example.com" / "alice"), message)
    process = launcher.twistd(
        ["--listen", LISTEN_LOCAL, "--maildir", str(tmp_path / "vmail" / "%d" / "%n"), "--auth", f"example:{users}"],
        tmp_path,
    )
    port = process.waitListening()

    def fetch(user: str, password: str) -> List[bytes]:
        client = poplib.POP3("127.0.0.1", port, timeout=30)
        try:
            client.user(user)
            client.pass_(password)
            return client.retr(1)[1]
        finally:
            client.quit()

    assert fetch("alice@example.com", "correct horse") == [b"From: bob@example.org", b"Subject: hello", b"",
                                                           b"Checked by a plugin."]
    for user, password in (("alice@example.com", "wrong"), ("nobody@example.com", "correct horse")):
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] invalid user name or password"):
            fetch(user, password)
    process.waitFor(r"login failed for nobody@example\.com .*: invalid user name or password")


def test_exampleRefusesAMissingFileAtStartup(installedExample: None, launcher: Launcher, tmp_path: Path) -> None:
    """
    A users file that cannot be read stops twistd at startup with a usage
    error naming it.
    """
    result = launcher.run(["-n", "--pidfile=", "--logfile=-", "popsrv", "--listen", LISTEN_LOCAL,
                           "--auth", f"example:{tmp_path / 'missing.json'}"], tmp_path)
    text = result.stdout.decode("utf-8", "replace")
    assert result.returncode != 0, text
    assert "missing.json" in text and "Traceback" not in text, text


def readmeBlocks() -> List[tuple]:
    """
    The code blocks of README.rst's section on credential backends, each
    with the example file it is taken from (named first in the paragraph
    before it).
    """
    readme = (REPO_ROOT / "README.rst").read_text(encoding="utf-8")
    section = readme.split("\nWrite your own credential backend\n", 1)[1].split("\n-----", 1)[0]
    section = section.rsplit("\n", 2)[0]
    pattern = r"(?<=\n\n)``([\w./-]+)``(?:[^\n]|\n(?!\n))*:\n\n\.\. code-block:: \w+\n\n((?:    .*\n|\n)+)"
    blocks = []
    for name, block in re.findall(pattern, section):
        code = "\n".join(line[4:] for line in block.rstrip("\n").split("\n")) + "\n"
        blocks.append((name, code))
    return blocks


def test_readmeShowsTheExample() -> None:
    """
    Every file README.rst shows from the example is shown as it is, whole
    or as a run of its lines, and the plugin and pyproject.toml whole.
    """
    blocks = readmeBlocks()
    shown = {name for name, _ in blocks}
    assert {"pyproject.toml", "twisted/plugins/popsrv_example_plugin.py", "popsrv_example_checker.py"} <= shown
    for name, code in blocks:
        text = (EXAMPLE / name).read_text(encoding="utf-8")
        if name.endswith(".py") and name.startswith("twisted/") or name == "pyproject.toml":
            assert code == text, f"README.rst shows {name} differently"
        else:
            assert code in text, f"README.rst shows lines that are not in {name}"


def test_exampleRefusesMalformedStoredForms() -> None:
    """
    A stored form that is not pbkdf2_sha256$ITERATIONS$SALT$HASH matches no
    password (and raises nothing, which would answer [SYS/TEMP]).
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("exampleChecker", EXAMPLE / "popsrv_example_checker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    good = module.hashPassword("secret", iterations=1000)
    assert module.verifyPassword(b"secret", good)
    assert not module.verifyPassword(b"wrong", good)
    for stored in ["", "secret", "pbkdf2_sha256$many$c2FsdA==$x", "a$b$c", "md5$1$s$h"]:
        assert not module.verifyPassword(b"secret", stored)
