"""
Whom popsrv serves as: a warning at startup when it still runs as root.

C{twistd} binds the listening ports as root and only then takes the
identity of C{--uid}/C{--gid}; without them (or under C{twist}, which never
changes identity) every session is served by root, which reads any file:
a user who can link another file into their Maildir (or link their Maildir
elsewhere) could then fetch it.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.logger import Logger

__all__ = ["RootWarning", "runningAsRoot"]

log = Logger()


def runningAsRoot(geteuid: Optional[Callable[[], int]] = None) -> bool:
    """
    Whether this process acts as root: its effective user id (from
    C{geteuid}, by default C{os.geteuid}) is 0.
    """
    return (geteuid or os.geteuid)() == 0


class RootWarning(Service):
    """
    Logs a warning (event C{running-as-root}) when the service starts as
    root, that is after C{twistd} would have dropped privileges.

    @ivar workers: how many worker processes serve (they inherit the
        parent's identity, so the parent warns for them too), or 0.
    @ivar geteuid: returns the effective user id (by default
        C{os.geteuid}).
    """

    def __init__(self, workers: int = 0, geteuid: Optional[Callable[[], int]] = None) -> None:
        self.workers = workers
        self.geteuid = geteuid

    def startService(self) -> None:
        """
        Warn if popsrv is about to serve as root.
        """
        super().startService()
        if not runningAsRoot(self.geteuid):
            return
        served = f"popsrv and its {self.workers} workers serve" if self.workers else "popsrv serves"
        log.warn(
            "{served} as root, so Maildir tricks (a hard link to another file, a linked Maildir) can "
            "expose any file on this machine; run it as an unprivileged user: twistd's --uid and --gid "
            "(twistd -u mail -g mail popsrv ...; ports are bound before), or a service manager's User= and Group=",
            served=served, workers=self.workers, event="running-as-root",
        )
