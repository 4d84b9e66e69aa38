"""
The import paths of the release before the layered layout still work, each
with a DeprecationWarning that names the new path.
"""

from __future__ import annotations

import importlib
import warnings

import pytest

MOVED = [
    ("popsrv.protocol", "POP3Factory", "popsrv.pop3"),
    ("popsrv.protocol", "POP3Protocol", "popsrv.pop3"),
    ("popsrv.protocol", "State", "popsrv.pop3"),
    ("popsrv.service", "ListeningService", "popsrv.app"),
    ("popsrv.service", "Options", "popsrv.app"),
    ("popsrv.service", "makeService", "popsrv.app"),
    ("popsrv.realm", "MaildirRealm", "popsrv.store.realm"),
    ("popsrv.realm", "MaildirTemplate", "popsrv.store.realm"),
    ("popsrv.realm", "mailboxName", "popsrv.store.realm"),
    ("popsrv.checkers", "StoredSecretChecker", "popsrv.auth.checkers"),
    ("popsrv.producer", "sendFile", "popsrv.wire.streaming"),
    ("popsrv.producer", "FileProducer", "popsrv.wire.streaming"),
    ("popsrv.store.maildir", "threadRunner", "popsrv.threads"),
    ("popsrv.interfaces", "MessageInfo", "popsrv.messages"),
    ("popsrv.interfaces", "MessageList", "popsrv.messages"),
    ("popsrv.app.metrics", "MetricsService", "popsrv.app.metricsweb"),
    ("popsrv.app.metrics", "metricsSite", "popsrv.app.metricsweb"),
]


@pytest.mark.parametrize("old, name, new", MOVED)
def test_oldPathGivesTheSameObjectAndWarns(old: str, name: str, new: str) -> None:
    """
    C{from old import name} gives the very object of the new path, with a
    warning that names it.
    """
    module = importlib.import_module(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert messages == [f"{old}.{name} was deprecated in popsrv 0.2.0: use {new}.{name} instead"]


def test_newPathsDoNotWarn() -> None:
    """The public API itself never warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import popsrv

        for name in popsrv.__all__:
            getattr(popsrv, name)
