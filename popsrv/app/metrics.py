"""
Prometheus metrics, for C{--metrics ENDPOINT}: L{MetricsObserver} counts
what popsrv's log events tell, and
L{popsrv.app.metricsweb.MetricsService} serves the counts in Prometheus's
text format at C{/metrics} on the endpoint.

Why a log observer: everything worth counting (a connection, a login, a
penalty, a refused connection, a storage error, the end of a session with
what it retrieved and deleted) is already one log event with a stable
C{event} key (README, "Logging"), and with C{--workers} every worker's
events are relayed to its parent's log (L{popsrv.app.workers}).  So an
observer in the process that serves C{/metrics} (the only one, or the
parent of the workers) counts the sessions of every worker, the protocol
knows nothing of metrics, and the workers serve nothing.  Sessions time
their commands only when asked (L{popsrv.pop3.timing}), and say so in their
C{session-end} event.

The observer is called by the logging system: it must never raise.  An
event it cannot read (a field missing, or of the wrong type) changes
nothing and is counted in C{popsrv_metrics_malformed_events_total}; label
values come from closed sets where popsrv has one (commands, mechanisms),
and are otherwise few and short, so no event can make series without end.
"""

from __future__ import annotations

import bisect
import math
import threading
import warnings
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer

from popsrv._deprecation import MOVED_IN
from popsrv.auth import sasl
from popsrv.pop3.commands import COMMANDS
from popsrv.pop3.timing import COMMAND_SECONDS_BUCKETS, OTHER_COMMAND

__all__ = ["MetricsObserver"]

SESSION_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)
# The penalty's pauses are 1, 2, 4, 8, up to 15 s (popsrv.auth.penalty),
# less the time since the address's last verdict.
PENALTY_SECONDS_BUCKETS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

OTHER = "other"
# The most values a label without a closed set takes (listeners, end
# reasons, storage operations); more are counted as OTHER.
MAX_LABEL_VALUES = 64
MAX_LABEL_LENGTH = 128

_COMMANDS = frozenset(name.decode("ascii") for name in COMMANDS) | {OTHER_COMMAND}
_MECHANISMS = frozenset({"USER/PASS", "APOP"} | {f"SASL {mechanism.name}" for mechanism in sasl.MECHANISMS})
_REFUSALS = ("server", "address")
_STORAGE_OPERATIONS = ("open", "lock", "list", "read", "stream", "commit", "release")


class _Malformed(Exception):
    """
    An event lacks a field a metric needs, or has one of the wrong type.
    """


def _count(event: LogEvent, key: str) -> int:
    """
    A whole number of at least 0 (a bool is not one).
    """
    value = event.get(key)
    if type(value) is not int or value < 0:
        raise _Malformed(key)
    return value


def _seconds(event: Mapping[str, Any], key: str) -> float:
    """
    A finite number of seconds, at least 0.
    """
    value = event.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _Malformed(key)
    return float(value)


def _text(event: LogEvent, key: str, default: Optional[str] = None) -> str:
    """
    A text field, or C{default} if there is none.
    """
    value = event.get(key, default)
    if not isinstance(value, str):
        raise _Malformed(key)
    return value


def _flag(event: LogEvent, key: str) -> str:
    """
    A true-or-false field, as a label value.
    """
    value = event.get(key)
    if value is not True and value is not False:
        raise _Malformed(key)
    return "true" if value else "false"


def _worker(event: LogEvent) -> Optional[int]:
    """
    The index of the worker that logged a relayed event, C{None} for an
    event of this process.
    """
    value = event.get("worker")
    if value is None:
        return None
    if type(value) is not int:
        raise _Malformed("worker")
    return value


class _LabelValues:
    """
    The values one label takes: those of a closed set, or the first
    L{MAX_LABEL_VALUES} short ones seen; anything else is L{OTHER}.
    """

    def __init__(self, known: Optional[FrozenSet[str]] = None) -> None:
        self._known = known
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if self._known is not None:
            return value if value in self._known else OTHER
        if value in self._seen:
            return value
        if len(value) > MAX_LABEL_LENGTH or len(self._seen) >= MAX_LABEL_VALUES:
            return OTHER
        self._seen.add(value)
        return value


class _CommandDurations(Collector):
    """
    The histogram of command durations, by command, added up from the
    per-session records of C{session-end} events
    (L{popsrv.pop3.timing.CommandTimes}): prometheus_client's own
    histogram only observes one duration at a time.
    """

    NAME = "popsrv_command_duration_seconds"
    DOCUMENTATION = (
        "Seconds from a command's line to its reply, by command (other: unknown ones); "
        "counted when the session ends."
    )

    def __init__(self) -> None:
        # command -> [count, sum, bucket 0, ..., bucket +Inf]
        self._commands: Dict[str, List[float]] = {}
        # As prometheus_client names its own histograms' buckets.
        self._bucketNames = [floatToGoString(bound) for bound in COMMAND_SECONDS_BUCKETS] + ["+Inf"]

    def add(self, command: str, count: int, seconds: float, buckets: Mapping[int, int]) -> None:
        """
        Add C{count} commands that took C{seconds} in all, C{buckets[i]}
        of them in bucket C{i}.
        """
        entry = self._commands.get(command)
        if entry is None:
            entry = self._commands[command] = [0, 0.0] + [0] * len(self._bucketNames)
        entry[0] += count
        entry[1] += seconds
        for index, inBucket in buckets.items():
            entry[2 + index] += inBucket

    def collect(self) -> List[Metric]:
        """
        The histogram family, one histogram per command seen.
        """
        family = HistogramMetricFamily(self.NAME, self.DOCUMENTATION, labels=["command"])
        for command, entry in sorted(self._commands.items()):
            cumulative = 0.0
            buckets = []
            for name, inBucket in zip(self._bucketNames, entry[2:]):
                cumulative += inBucket
                buckets.append((name, cumulative))
            family.add_metric([command], buckets, entry[1])
        return [family]


def _bucketIndex(name: object) -> int:
    """
    The index among L{COMMAND_SECONDS_BUCKETS} (and +Inf) of a bucket
    named by its upper bound.
    """
    if not isinstance(name, str):
        raise _Malformed("commands")
    try:
        bound = float(name)
    except ValueError:
        raise _Malformed("commands")
    if math.isnan(bound):
        raise _Malformed("commands")
    return bisect.bisect_left(COMMAND_SECONDS_BUCKETS, bound)


def _commandRecords(value: object) -> List[Tuple[str, int, float, Dict[int, int]]]:
    """
    The C{commands} of a C{session-end} event, read whole: for each
    command, its count, its sum of seconds and its buckets by index.
    """
    if not isinstance(value, dict) or len(value) > len(_COMMANDS):
        raise _Malformed("commands")
    records = []
    for command, record in value.items():
        if not isinstance(command, str) or not isinstance(record, dict):
            raise _Malformed("commands")
        count = _count(record, "count")
        seconds = _seconds(record, "sum")
        buckets = record.get("buckets")
        if not isinstance(buckets, dict):
            raise _Malformed("commands")
        byIndex: Dict[int, int] = {}
        for name, inBucket in buckets.items():
            if type(inBucket) is not int or inBucket < 0:
                raise _Malformed("commands")
            index = _bucketIndex(name)
            byIndex[index] = byIndex.get(index, 0) + inBucket
        if sum(byIndex.values()) != count:
            raise _Malformed("commands")
        records.append((command, count, seconds, byIndex))
    return records


@implementer(ILogObserver)
class MetricsObserver:
    """
    A log observer that keeps popsrv's Prometheus metrics, in a registry
    of its own, from the log events of POP3 sessions (of this process, or
    relayed from its workers).

    @ivar registry: the C{CollectorRegistry} of the metrics.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        # Events may come from any thread; re-entrant, should counting
        # ever log (Python's warnings reach twistd's log).
        self._lock = threading.RLock()
        self._open: Dict[Tuple[Optional[int], str], int] = {}
        self._listeners = _LabelValues()
        self._reasons = _LabelValues()
        self._operations = _LabelValues()
        self._refusals = _LabelValues(frozenset(_REFUSALS))
        self._mechanisms = _LabelValues(_MECHANISMS)
        self._commands = _LabelValues(_COMMANDS)
        self._connectionsOpen = Gauge(
            "popsrv_connections_open", "POP3 connections open now, by listener.", ["listener"], registry=registry,
        )
        self._connections = Counter(
            "popsrv_connections", "POP3 connections admitted, by listener and whether TLS from their start.",
            ["listener", "tls"], registry=registry,
        )
        self._refused = Counter(
            "popsrv_connections_refused",
            "Connections turned away by a connection limit: server (--max-connections) or address "
            "(--max-connections-per-ip).",
            ["reason"], registry=registry,
        )
        self._logins = Counter(
            "popsrv_logins",
            "Logins by mechanism and result: ok (logged in), failed (credentials refused), unavailable "
            "(the credential backend could not answer).",
            ["mechanism", "result"], registry=registry,
        )
        self._penalty = Histogram(
            "popsrv_login_penalty_seconds", "Seconds logins waited for their address's turn after failed logins.",
            buckets=PENALTY_SECONDS_BUCKETS, registry=registry,
        )
        self._inUse = Counter(
            "popsrv_maildrop_in_use", "Logins refused with [IN-USE]: another session held the maildrop.",
            registry=registry,
        )
        self._storageErrors = Counter(
            "popsrv_storage_errors", "Maildrop failures, by operation.", ["operation"], registry=registry,
        )
        self._stls = Counter("popsrv_stls", "Connections that started TLS with STLS.", registry=registry)
        self._sessions = Counter(
            "popsrv_sessions_ended", "Sessions ended, by reason.", ["reason"], registry=registry,
        )
        self._duration = Histogram(
            "popsrv_session_duration_seconds", "Seconds from connection to close, of admitted connections.",
            buckets=SESSION_SECONDS_BUCKETS, registry=registry,
        )
        self._retrieved = Counter(
            "popsrv_retrieved_messages", "Messages sent whole by RETR (each once a session).", registry=registry,
        )
        self._retrievedBytes = Counter(
            "popsrv_retrieved_bytes", "Octets of those messages, as STAT and LIST count them.", registry=registry,
        )
        self._deleted = Counter(
            "popsrv_deleted_messages", "Messages deleted at QUIT (deletions applied).", registry=registry,
        )
        self._commandDurations = _CommandDurations()
        registry.register(self._commandDurations)
        self._malformed = Counter(
            "popsrv_metrics_malformed_events",
            "Log events the metrics could not read (a field missing or of the wrong type), left out.",
            registry=registry,
        )
        # Series that alerts watch exist from the start, at 0.
        for reason in _REFUSALS:
            self._refused.labels(reason)
        for operation in _STORAGE_OPERATIONS:
            self._storageErrors.labels(self._operations(operation))
        self._handlers: Dict[str, Callable[[LogEvent], None]] = {
            "connect": self._connect,
            "session-end": self._sessionEnd,
            "connection-refused": self._connectionRefused,
            "login": self._login,
            "login-failed": self._loginFailed,
            "auth-unavailable": self._authUnavailable,
            "penalty": self._penaltyWaited,
            "in-use": self._maildropInUse,
            "storage-error": self._storageError,
            "stls": self._startedTLS,
            "worker-start": self._workerChanged,
            "worker-exit": self._workerChanged,
        }

    def __call__(self, event: LogEvent) -> None:
        """
        Count what C{event} tells, if it is one of popsrv's that a metric
        needs; never raise.
        """
        try:
            name = event.get("event")
            handler = self._handlers.get(name) if isinstance(name, str) else None
            if handler is None:
                return
            namespace = event.get("log_namespace")
            if not isinstance(namespace, str) or not namespace.startswith("popsrv."):
                return
            with self._lock:
                handler(event)
        except Exception:
            try:
                self._malformed.inc()
            except Exception:  # noqa: BLE001 - nothing may reach the logging system
                pass

    def render(self) -> bytes:
        """
        The metrics in Prometheus's text format.
        """
        return generate_latest(self.registry)

    # Connections

    def _connect(self, event: LogEvent) -> None:
        listener = self._listeners(_text(event, "listener", "-"))
        tls = _flag(event, "tls")
        worker = _worker(event)
        self._open[worker, listener] = self._open.get((worker, listener), 0) + 1
        self._connectionsOpen.labels(listener).inc()
        self._connections.labels(listener, tls).inc()

    def _sessionEnd(self, event: LogEvent) -> None:
        listener = self._listeners(_text(event, "listener", "-"))
        worker = _worker(event)
        reason = self._reasons(_text(event, "reason"))
        duration = _seconds(event, "duration")
        retrieved = _count(event, "retrieved")
        retrievedBytes = _count(event, "retrievedOctets")
        deleted = _count(event, "deleted")
        commands: List[Tuple[str, int, float, Dict[int, int]]] = []
        malformedCommands = False
        if "commands" in event:
            try:
                commands = _commandRecords(event["commands"])
            except _Malformed:
                malformedCommands = True
        opened = self._open.get((worker, listener), 0)
        if opened > 0:
            self._open[worker, listener] = opened - 1
            self._connectionsOpen.labels(listener).dec()
        self._sessions.labels(reason).inc()
        self._duration.observe(duration)
        self._retrieved.inc(retrieved)
        self._retrievedBytes.inc(retrievedBytes)
        self._deleted.inc(deleted)
        for command, count, seconds, buckets in commands:
            self._commandDurations.add(self._commands(command), count, seconds, buckets)
        if malformedCommands:
            self._malformed.inc()

    def _connectionRefused(self, event: LogEvent) -> None:
        self._refused.labels(self._refusals(_text(event, "reason"))).inc()

    def _workerChanged(self, event: LogEvent) -> None:
        """
        A worker started or ended: the connections it had open are gone
        (it may have died without logging their ends).
        """
        worker = _worker(event)
        if worker is None:
            raise _Malformed("worker")
        for key in [key for key in self._open if key[0] == worker]:
            self._connectionsOpen.labels(key[1]).dec(self._open.pop(key))

    def _startedTLS(self, event: LogEvent) -> None:
        self._stls.inc()

    # Logins

    def _loginResult(self, event: LogEvent, result: str) -> None:
        self._logins.labels(self._mechanisms(_text(event, "mechanism")), result).inc()

    def _login(self, event: LogEvent) -> None:
        self._loginResult(event, "ok")

    def _loginFailed(self, event: LogEvent) -> None:
        self._loginResult(event, "failed")

    def _authUnavailable(self, event: LogEvent) -> None:
        self._loginResult(event, "unavailable")

    def _penaltyWaited(self, event: LogEvent) -> None:
        self._penalty.observe(_seconds(event, "delay"))

    def _maildropInUse(self, event: LogEvent) -> None:
        self._inUse.inc()

    def _storageError(self, event: LogEvent) -> None:
        self._storageErrors.labels(self._operations(_text(event, "operation"))).inc()



# Moved to popsrv.app.metricsweb (which imports this module, so they are
# looked up there only when asked for here).
_MOVED = frozenset({"METRICS_PATH", "MetricsResource", "MetricsService", "metricsSite"})


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"{__name__}.{name} was deprecated in popsrv {MOVED_IN.public()}: use popsrv.app.metricsweb.{name} instead",
        DeprecationWarning, stacklevel=2,
    )
    from popsrv.app import metricsweb

    return getattr(metricsweb, name)
