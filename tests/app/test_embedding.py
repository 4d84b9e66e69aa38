"""
The embedding example of README.rst, checked: it is the shipped
examples/embedded.tac, and that application serves mail under twistd.
"""

from __future__ import annotations

import poplib
import re
from pathlib import Path

from tests.support.servers import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "embedded.tac"


def test_readmeShowsTheExample():
    """
    README.rst's embedding code block is examples/embedded.tac, verbatim.
    """
    readme = (REPO_ROOT / "README.rst").read_text(encoding="utf-8")
    block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", readme).group(1)
    code = "\n".join(line[4:] for line in block.rstrip("\n").split("\n")) + "\n"
    assert code == EXAMPLE.read_text(encoding="utf-8")


def test_exampleApplicationServesMail(launcher, tmp_path: Path):
    """
    twistd -n -y examples/embedded.tac serves alice's message over POP3.
    """
    process = launcher.twistd([], tmp_path, application=EXAMPLE,
                              env={"POP3_LISTEN": "tcp:0:interface=127.0.0.1"})
    port = process.waitListening()
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        assert client.getwelcome().endswith(b"@pop.example.com>")
        client.user("alice")
        client.pass_("secret")
        _, lines, _ = client.retr(1)
        assert lines == [b"Subject: hello", b"", b"Served from memory."]
    finally:
        client.quit()
