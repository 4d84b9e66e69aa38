"""
The settings of the PostgreSQL credential backend (C{--auth pgsql:FILE}):
reading them from their file, and checking them (the query passes the
login name only through named placeholders), before anything connects.
"""

from __future__ import annotations

import configparser
import math
import re
from typing import Any, Dict, FrozenSet

import attr
import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_TIMEOUT",
    "MAXIMUM_POOL",
    "PLACEHOLDERS",
    "SECTION",
    "PostgresSettings",
    "SettingsError",
    "checkQuery",
    "queryParameters",
    "readSettings",
]

SECTION = "pgsql"
DEFAULT_TIMEOUT = 3.0
DEFAULT_POOL = 4
MAXIMUM_POOL = 100
PLACEHOLDERS = ("user", "localpart", "domain")

# A psycopg placeholder: %(name)s, %(name)b or %(name)t, a positional %s,
# or %% for a literal percent sign.
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]*)\))?(?P<kind>.?)", re.S)


class SettingsError(ValueError):
    """
    The PostgreSQL settings (or the file holding them) cannot be used; the
    text says why, for the operator.
    """


def checkQuery(query: str) -> FrozenSet[str]:
    """
    Check that a query passes the login name only through the named
    placeholders of L{PLACEHOLDERS}, and return the names it uses.

    @raise SettingsError: for a positional or unknown placeholder, a lone
        C{%}, or a query that does not use C{%(user)s} or
        C{%(localpart)s} (it would find the same row for everyone).
    """
    used = set()
    for match in _PLACEHOLDER.finditer(query):
        name, kind = match.group("name"), match.group("kind")
        if name is None and kind == "%":
            continue
        if name is None:
            raise SettingsError(
                f"the query has {match.group(0)!r}: pass the login name only as %(user)s, "
                "%(localpart)s or %(domain)s, and write a literal % as %%"
            )
        if name not in PLACEHOLDERS:
            raise SettingsError(
                f"the query uses the unknown placeholder %({name})s; it may use %(user)s, %(localpart)s, %(domain)s"
            )
        if kind not in ("s", "b", "t"):
            raise SettingsError(f"the placeholder %({name}){kind} must end in s, as in %({name})s")
        used.add(name)
    if not used & {"user", "localpart"}:
        raise SettingsError("the query must select the user with %(user)s or %(localpart)s")
    return frozenset(used)


def _checkSettings(instance: object, attribute: attr.Attribute[Any], value: Any) -> None:
    if attribute.name == "conninfo":
        try:
            conninfo_to_dict(value)
        except psycopg.Error as error:
            raise SettingsError(f"conninfo is not a libpq connection string: {error}")
    elif attribute.name == "query":
        checkQuery(value)
    elif attribute.name == "timeout":
        if not (isinstance(value, (int, float)) and 0 < value <= 300 and math.isfinite(value)):
            raise SettingsError(f"timeout must be a number of seconds above 0 and at most 300, not {value!r}")
    elif attribute.name == "pool":
        if not (isinstance(value, int) and 1 <= value <= MAXIMUM_POOL):
            raise SettingsError(f"pool must be a whole number from 1 to {MAXIMUM_POOL}, not {value!r}")


@attr.s(frozen=True, auto_attribs=True, kw_only=True)
class PostgresSettings:
    """
    What the PostgreSQL backend needs to know.

    @ivar conninfo: a libpq connection string (C{host=... dbname=...}) or
        URI (C{postgresql://...}).
    @ivar query: the SQL query that returns the stored secret, one column
        and at most one row, with C{%(user)s} (the login name),
        C{%(localpart)s} (before its last C{@}) and C{%(domain)s} (after
        it, or empty) as placeholders.
    @ivar timeout: seconds a lookup may take, connecting included, before
        the login is refused for now.
    @ivar pool: the most connections (and threads) the backend uses.
    """

    conninfo: str = attr.ib(validator=_checkSettings)
    query: str = attr.ib(validator=_checkSettings)
    timeout: float = attr.ib(default=DEFAULT_TIMEOUT, validator=_checkSettings)
    pool: int = attr.ib(default=DEFAULT_POOL, validator=_checkSettings)


def readSettings(path: str) -> PostgresSettings:
    """
    Read L{PostgresSettings} from an INI file with a C{[pgsql]} section
    (keys C{conninfo}, C{query}, C{timeout}, C{pool}; the query may go on
    over indented lines).

    @raise SettingsError: naming the file, if it cannot be read or used.
    """
    parser = configparser.ConfigParser(interpolation=None, default_section="-")
    try:
        with open(path, encoding="utf-8") as stream:
            parser.read_file(stream)
    except OSError as error:
        raise SettingsError(f"cannot read {path}: {error.strerror or error}")
    except (configparser.Error, UnicodeDecodeError) as error:
        raise SettingsError(f"{path} is not a usable settings file: {error}")
    if not parser.has_section(SECTION):
        raise SettingsError(f"{path} has no [{SECTION}] section")
    section = parser[SECTION]
    unknown = sorted(set(section) - {"conninfo", "query", "timeout", "pool"})
    if unknown:
        raise SettingsError(f"{path}: unknown setting {unknown[0]!r} (known: conninfo, query, timeout, pool)")
    values: Dict[str, Any] = {}
    for key in ("conninfo", "query"):
        if not section.get(key, "").strip():
            raise SettingsError(f"{path}: [{SECTION}] needs {key} = ...")
        values[key] = section[key].strip()
    try:
        if "timeout" in section:
            values["timeout"] = float(section["timeout"])
        if "pool" in section:
            values["pool"] = int(section["pool"])
    except ValueError as error:
        raise SettingsError(f"{path}: {error}")
    try:
        return PostgresSettings(**values)
    except SettingsError as error:
        raise SettingsError(f"{path}: {error}")


def queryParameters(user: str) -> Dict[str, str]:
    """
    The values of the query's placeholders for a login name: C{user}, and
    C{localpart} and C{domain} split at its last C{@} (C{domain} is empty
    for a name without one).
    """
    localpart, at, domain = user.rpartition("@")
    if not at:
        localpart, domain = user, ""
    return {"user": user, "localpart": localpart, "domain": domain}
