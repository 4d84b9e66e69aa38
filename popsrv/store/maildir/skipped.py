"""
The warnings a snapshot of a Maildir logs (on the calling thread, once it
is made) for what it skipped, and for work a helper process could not do.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from twisted.logger import Logger

__all__ = ["LOGGED_NAMES", "logSkipped"]

# (The namespace of the maildrop, whose events these are.)
log = Logger(namespace="popsrv.store.maildir.maildrop")
# How many names a warning gives.
LOGGED_NAMES = 20


def logSkipped(
    path: str,
    intakeProblem: Optional[str],
    listingProblem: Optional[str],
    skipped: Sequence[str],
    unusable: List[Tuple[str, str]],
) -> None:
    """
    Log why the helper process that takes new mail failed, why the one that
    parses names of C{cur/} failed, the entries that are not regular files
    (C{skipped}, such as C{cur/x}) and the files that could not be used,
    with why (C{unusable}): each a warning with a stable event name, if
    there is anything to say.
    """
    if intakeProblem is not None:
        log.warn(
            "could not take the new mail of {path} in a helper process ({why}): taken in the server",
            path=path, why=intakeProblem, event="intake-helper-failed",
        )
    if listingProblem is not None:
        log.warn(
            "could not parse the names of {path}/cur in a helper process ({why}): parsed in the server",
            path=path, why=listingProblem, event="listing-helper-failed",
        )
    if skipped:
        log.warn(
            "skipped {count} entries of {path} that are not regular files: {names}",
            count=len(skipped), path=path, names=list(skipped[:LOGGED_NAMES]), event="not-a-file",
        )
    if unusable:
        log.warn(
            "skipped {count} messages of {path} that cannot be used: {names}",
            count=len(unusable), path=path, names=[f"{name} ({why})" for name, why in unusable[:LOGGED_NAMES]],
            event="unusable-file",
        )
