"""
What C{python -m popsrv check} checks for C{--mbox}: the directory every
spool is below, and popsrv's state directory, where it keeps what it
knows of each spool (see L{popsrv.store.mbox.state}).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from popsrv.app.access import Identity, unusableDirectory, unwritableDirectory
from popsrv.app.secret import defaultStateDirectory
from popsrv.store.realm import PathTemplate

if TYPE_CHECKING:  # pragma: no cover
    from popsrv.app.check import CheckOptions, Report

__all__ = ["checkSpools"]


def checkSpools(options: CheckOptions, identity: Identity, report: Report) -> Optional[str]:
    """
    Check that C{identity} can reach the directory of the spools (and make
    dotlocks there, or a warning), and use or make the state directory;
    return the spools' directory (C{None} without C{--mbox}).
    """
    template: Optional[PathTemplate] = options.get("mbox-template")
    if template is None:
        return None
    base = template.base
    label = f"--mbox {options['mbox']}"
    if not os.path.isdir(base):
        report.problem(f"{label}: {base} is not a directory, so there are no spools to serve")
        return base
    problem = unusableDirectory(base, identity)
    if problem is not None:
        report.problem(f"{label}: {base}: {problem}")
        return base
    spoolsInBase = os.path.dirname(template.expand("user@example.com")) == base
    problem = unwritableDirectory(base, identity)
    if problem is not None and spoolsInBase:
        report.warning(
            f"{label}: {problem}, so popsrv cannot make dotlocks there: it locks spools with fcntl alone "
            "(run it in the group that owns the directory, such as mail)"
        )
    # Where twistd, started as this process is, keeps it.
    state = defaultStateDirectory()
    problem = unusableDirectory(state, identity) or unwritableDirectory(state, identity)
    if problem is not None:
        report.problem(
            f"{label}: the state directory {state} (session locks, journals, seen marks): {problem} "
            "(set STATE_DIRECTORY, or systemd's StateDirectory=)"
        )
    return base
