"""
Old import paths kept for one release: each still works, and warns with the
new path the first time a name is looked up through it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Iterable

from incremental import Version
from twisted.python.deprecate import deprecatedModuleAttribute

__all__ = ["MOVED_IN", "aliasMoved"]

# The release that moved these names; they go away in the release after it.
MOVED_IN = Version("popsrv", 0, 2, 0)


def aliasMoved(moduleName: str, newModuleName: str, names: Iterable[str]) -> None:
    """
    Make each of C{names} in module C{moduleName} a deprecated alias of the
    same name in C{newModuleName}.

    Call it at the end of the old module, which must already hold the names.
    """
    module = sys.modules[moduleName]
    newModule = importlib.import_module(newModuleName)
    for name in names:
        setattr(module, name, getattr(newModule, name))
        deprecatedModuleAttribute(MOVED_IN, f"use {newModuleName}.{name} instead", moduleName, name)
