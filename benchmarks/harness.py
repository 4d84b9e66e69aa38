"""
Starting the compared servers one after the other, each on its own fresh
Maildirs, and stopping them whatever happens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Iterator

__all__ = ["SERVERS", "eachServer", "startServer"]

SERVERS = (
    "popsrv", "popsrv-workers2", "popsrv-metrics", "popsrv-workers2-metrics", "twisted", "twisted-nodelay", "dovecot",
)


def startServer(name: str, root: str, users: dict[str, str]):
    """
    Start one of L{SERVERS} serving the Maildirs under C{root}; return it,
    or a one-line reason why it is not available.
    """
    if name.startswith("popsrv"):
        from servers import popsrv

        # Every client of a scenario comes from 127.0.0.1, which the
        # default --max-connections-per-ip (10) would turn away.
        unlimited = ("--max-connections-per-ip", "0")
        extra = ["--workers", "2"] if "workers2" in name else []
        if name.endswith("-metrics"):
            extra += ["--metrics", "tcp:0:interface=127.0.0.1"]
        return popsrv.start(root, users, *unlimited, *extra, name=name)
    if name.startswith("twisted"):
        from servers import twistedmail

        return twistedmail.start(root, users, nodelay=name.endswith("nodelay"))
    from servers import dovecot

    reason = dovecot.ensureInstalled()
    if reason is not None:
        return reason
    return dovecot.start(root, users)


def eachServer(names, prepare: Callable[[str], dict[str, str]]) -> Iterator:
    """
    For each server name: make a fresh Maildir root, fill it with
    C{prepare(root)} (which returns the users), start the server, yield it,
    then stop it and remove the Maildirs. A server that is not available is
    reported and skipped.
    """
    for name in names:
        work = tempfile.mkdtemp(prefix=f"popsrv-bench-{name}-")
        try:
            root = os.path.join(work, "mail")
            server = startServer(name, root, prepare(root))
            if isinstance(server, str):
                print(f"- {name}: skipped, {server}", flush=True)
                continue
            try:
                yield server
            finally:
                server.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
