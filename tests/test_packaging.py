"""
The installed distribution carries the whole package and the twistd plugin
(the other tests import popsrv from the checkout, so they would not notice a
module that setup.cfg forgets to install).
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from tests.support.servers import REPO_ROOT


def installed():
    """
    The installed popsrv distribution, or a clear failure if there is none.
    """
    try:
        distribution = metadata.distribution("popsrv")
    except metadata.PackageNotFoundError:
        pytest.fail("popsrv is not installed: run the install command of README.rst first")
    direct = distribution.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        pytest.skip("an editable install serves the checkout's own files")
    return distribution


def test_everyModuleIsInstalled():
    """
    Every module of popsrv/ and the twistd plugin are in the installed
    distribution, and its version is the checkout's.
    """
    import popsrv

    distribution = installed()
    files = {str(path) for path in distribution.files}
    sources = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "popsrv").rglob("*.py"))
    plugins = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "twisted" / "plugins").glob("popsrv_*.py"))
    missing = [source for source in sources + plugins if source not in files]
    assert missing == [], "not installed: setup.cfg leaves them out, or the install is older than the checkout"
    assert distribution.version == popsrv.__version__
    assert not any(path.startswith("twisted/__init__") or path.startswith("twisted/plugins/__init__")
                   for path in files)


def test_everyPublicNameIsThereAndAServerDoesNotLoadTheTestingHelpers() -> None:
    """
    Every name popsrv exports is importable from it; importing the server
    (a worker's module) loads neither popsrv.testing nor twisted.trial.
    """
    import subprocess
    import sys

    import popsrv

    for name in popsrv.__all__:
        assert getattr(popsrv, name) is not None
    assert sorted(popsrv.__all__) == sorted(["__version__", *popsrv._LAZY])
    assert popsrv.pop3.POP3Protocol is popsrv.POP3Protocol  # subpackages, after a bare "import popsrv"
    with pytest.raises(AttributeError):
        popsrv.noSuchThing  # noqa: B018
    code = (
        "import sys, popsrv.app.worker;"
        " print(sorted(m for m in ('popsrv.testing', 'twisted.trial') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
