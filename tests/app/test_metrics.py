"""
Tests of L{popsrv.app.metrics}: the observer fed hand-made log events
(well-formed, malformed and hostile), the C{/metrics} resource, the
service, and C{--metrics} in the options and C{makeService}.
"""

from __future__ import annotations

import math

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python import usage
from twisted.web.test.requesthelper import DummyRequest

from popsrv.app.metrics import MAX_LABEL_VALUES, MetricsObserver
from popsrv.app.metricsweb import MetricsService, metricsSite
from popsrv.app.options import Options
from popsrv.app.service import makeService
from popsrv.pop3.timing import CommandTimes

NAMESPACE = "popsrv.pop3.protocol.POP3Protocol"


def event(name: str, namespace: str = NAMESPACE, **fields) -> dict:
    """
    A log event as popsrv logs it.
    """
    return {"event": name, "log_namespace": namespace, "log_level": LogLevel.info, "log_format": "", **fields}


def sessionEnd(**fields) -> dict:
    """
    A well-formed session-end event, with C{fields} changed.
    """
    values = {
        "user": "alice", "peer": "127.0.0.1:4000", "listener": "127.0.0.1:110", "reason": "quit",
        "retrieved": 2, "retrievedOctets": 300, "deleted": 1, "duration": 0.25,
    }
    values.update(fields)
    return event("session-end", **{k: v for k, v in values.items() if v is not None})


@pytest.fixture
def observer() -> MetricsObserver:
    """
    A new observer, with a registry of its own.
    """
    return MetricsObserver()


def value(observer: MetricsObserver, name: str, **labels: str) -> float:
    """
    A sample's value (0 if there is none).
    """
    found = observer.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_connectionsAndTheirEnds(observer):
    """
    connect counts a connection by listener and TLS and opens it;
    session-end closes it and counts what the session did.
    """
    observer(event("connect", listener="127.0.0.1:110", tls=False))
    observer(event("connect", listener="127.0.0.1:995", tls=True))
    observer(event("connect", listener="127.0.0.1:110", tls=False))
    assert value(observer, "popsrv_connections_total", listener="127.0.0.1:110", tls="false") == 2
    assert value(observer, "popsrv_connections_total", listener="127.0.0.1:995", tls="true") == 1
    assert value(observer, "popsrv_connections_open", listener="127.0.0.1:110") == 2
    observer(sessionEnd())
    assert value(observer, "popsrv_connections_open", listener="127.0.0.1:110") == 1
    assert value(observer, "popsrv_connections_open", listener="127.0.0.1:995") == 1
    assert value(observer, "popsrv_sessions_ended_total", reason="quit") == 1
    assert value(observer, "popsrv_retrieved_messages_total") == 2
    assert value(observer, "popsrv_retrieved_bytes_total") == 300
    assert value(observer, "popsrv_deleted_messages_total") == 1
    assert value(observer, "popsrv_session_duration_seconds_count") == 1
    assert value(observer, "popsrv_session_duration_seconds_sum") == 0.25
    assert value(observer, "popsrv_session_duration_seconds_bucket", le="0.1") == 0
    assert value(observer, "popsrv_session_duration_seconds_bucket", le="0.25") == 1


def test_theOpenGaugeNeverGoesBelowZero(observer):
    """
    An end without its connect (the observer started meanwhile) leaves
    the gauge alone, but counts the session.
    """
    observer(sessionEnd())
    assert value(observer, "popsrv_connections_open", listener="127.0.0.1:110") == 0
    assert value(observer, "popsrv_sessions_ended_total", reason="quit") == 1


def test_aWorkerThatEndsTakesItsConnections(observer):
    """
    When a worker ends (or a new one starts in its place), the connections
    it had open are no longer counted open: it may have died without
    logging their ends.  Other workers' stay.
    """
    for worker in (0, 0, 1):
        observer(event("connect", listener="0.0.0.0:110", tls=False, worker=worker))
    assert value(observer, "popsrv_connections_open", listener="0.0.0.0:110") == 3
    observer(event("worker-exit", namespace="popsrv.app.workers", worker=0))
    assert value(observer, "popsrv_connections_open", listener="0.0.0.0:110") == 1
    observer(sessionEnd(listener="0.0.0.0:110", worker=0))
    assert value(observer, "popsrv_connections_open", listener="0.0.0.0:110") == 1
    observer(event("worker-start", namespace="popsrv.app.workers", worker=1))
    assert value(observer, "popsrv_connections_open", listener="0.0.0.0:110") == 0
    assert value(observer, "popsrv_connections_total", listener="0.0.0.0:110", tls="false") == 3


def test_loginsRefusalsPenaltiesAndErrors(observer):
    """
    Each of the other events has its metric.
    """
    observer(event("login", mechanism="USER/PASS", tls=False, user="alice"))
    observer(event("login", mechanism="SASL SCRAM-SHA-256", tls=True, user="alice"))
    observer(event("login-failed", mechanism="USER/PASS", why="wrong", failures=1))
    observer(event("login-failed", mechanism="APOP", why="wrong", failures=1))
    observer(event("auth-unavailable", mechanism="USER/PASS", why="database down"))
    observer(event("connection-refused", namespace="popsrv.pop3.limits", reason="address"))
    observer(event("penalty", namespace="popsrv.pop3.login", delay=2.0))
    observer(event("penalty", namespace="popsrv.pop3.login", delay=7.5))
    observer(event("in-use", user="alice"))
    observer(event("storage-error", operation="commit"))
    observer(event("storage-error", operation="read"))
    observer(event("stls"))
    assert value(observer, "popsrv_logins_total", mechanism="USER/PASS", result="ok") == 1
    assert value(observer, "popsrv_logins_total", mechanism="SASL SCRAM-SHA-256", result="ok") == 1
    assert value(observer, "popsrv_logins_total", mechanism="USER/PASS", result="failed") == 1
    assert value(observer, "popsrv_logins_total", mechanism="APOP", result="failed") == 1
    assert value(observer, "popsrv_logins_total", mechanism="USER/PASS", result="unavailable") == 1
    assert value(observer, "popsrv_connections_refused_total", reason="address") == 1
    assert value(observer, "popsrv_connections_refused_total", reason="server") == 0
    assert value(observer, "popsrv_login_penalty_seconds_count") == 2
    assert value(observer, "popsrv_login_penalty_seconds_sum") == 9.5
    assert value(observer, "popsrv_login_penalty_seconds_bucket", le="4.0") == 1
    assert value(observer, "popsrv_maildrop_in_use_total") == 1
    assert value(observer, "popsrv_storage_errors_total", operation="commit") == 1
    assert value(observer, "popsrv_storage_errors_total", operation="read") == 1
    assert value(observer, "popsrv_storage_errors_total", operation="lock") == 0
    assert value(observer, "popsrv_stls_total") == 1
    assert value(observer, "popsrv_metrics_malformed_events_total") == 0


def test_alertedSeriesExistFromTheStart(observer):
    """
    The series alerts watch are there, at 0, before anything happened.
    """
    names = {sample.name: sample for family in observer.registry.collect() for sample in family.samples}
    assert "popsrv_connections_refused_total" in names and "popsrv_storage_errors_total" in names
    assert value(observer, "popsrv_connections_refused_total", reason="server") == 0
    for operation in ("open", "lock", "list", "read", "stream", "commit", "release"):
        assert observer.registry.get_sample_value("popsrv_storage_errors_total", {"operation": operation}) == 0


def test_commandDurations(observer):
    """
    The command records of session-end events add up to one histogram per
    command, in Prometheus's cumulative buckets.
    """
    first, second = CommandTimes(), CommandTimes()
    first.record("RETR", 0.0002)
    first.record("RETR", 0.003)
    first.record("PASS", 1.0)
    second.record("RETR", 0.004)
    second.record("other", 20.0)
    observer(sessionEnd(commands=first.summary()))
    observer(sessionEnd(commands=second.summary()))
    assert value(observer, "popsrv_command_duration_seconds_count", command="RETR") == 3
    assert value(observer, "popsrv_command_duration_seconds_sum", command="RETR") == pytest.approx(0.0072)
    assert value(observer, "popsrv_command_duration_seconds_bucket", command="RETR", le="0.0005") == 1
    assert value(observer, "popsrv_command_duration_seconds_bucket", command="RETR", le="0.0025") == 1
    assert value(observer, "popsrv_command_duration_seconds_bucket", command="RETR", le="0.005") == 3
    assert value(observer, "popsrv_command_duration_seconds_bucket", command="RETR", le="+Inf") == 3
    assert value(observer, "popsrv_command_duration_seconds_bucket", command="PASS", le="0.5") == 0
    assert value(observer, "popsrv_command_duration_seconds_bucket", command="PASS", le="1.0") == 1
    assert value(observer, "popsrv_command_duration_seconds_bucket", command="other", le="10.0") == 0
    assert value(observer, "popsrv_command_duration_seconds_bucket", command="other", le="+Inf") == 1


def test_theTextFormatParses(observer):
    """
    What /metrics serves is Prometheus's text format, which its own parser
    reads back.
    """
    times = CommandTimes()
    times.record("STAT", 0.001)
    observer(event("connect", listener='we"ird\\listener\n', tls=False))
    observer(sessionEnd(listener='we"ird\\listener\n', commands=times.summary()))
    families = {family.name: family for family in text_string_to_metric_families(observer.render().decode())}
    assert families["popsrv_command_duration_seconds"].type == "histogram"
    assert families["popsrv_connections"].type == "counter"
    (sample,) = [s for s in families["popsrv_connections"].samples if s.name == "popsrv_connections_total"]
    assert sample.labels == {"listener": 'we"ird\\listener\n', "tls": "false"} and sample.value == 1


# Malformed and hostile events

MALFORMED = [
    event("connect", listener="127.0.0.1:110"),  # no tls
    event("connect", listener="127.0.0.1:110", tls="yes"),
    event("connect", listener=110, tls=False),
    event("connect", listener="127.0.0.1:110", tls=False, worker="0"),
    event("connect", listener="127.0.0.1:110", tls=False, worker=[0]),
    sessionEnd(duration=None),
    sessionEnd(duration="0.25"),
    sessionEnd(duration=float("nan")),
    sessionEnd(duration=float("inf")),
    sessionEnd(duration=-1.0),
    sessionEnd(retrieved=True),
    sessionEnd(retrieved=2.0),
    sessionEnd(retrievedOctets=-300),
    sessionEnd(deleted=None),
    sessionEnd(reason=None),
    sessionEnd(reason=b"quit"),
    event("login", user="alice"),
    event("login-failed", mechanism=None),
    event("auth-unavailable", mechanism=("USER/PASS",)),
    event("connection-refused", namespace="popsrv.pop3.limits"),
    event("penalty", delay="2"),
    event("penalty", delay=-2.0),
    event("storage-error", operation=7),
    event("worker-exit", namespace="popsrv.app.workers"),
    event("worker-start", namespace="popsrv.app.workers", worker=False),
]


@pytest.mark.parametrize("bad", MALFORMED, ids=range(len(MALFORMED)))
def test_aMalformedEventChangesNothingButItsCount(observer, bad):
    """
    An event with a field missing or of the wrong type changes no metric,
    is counted as malformed, and raises nothing.
    """
    before = observer.render()
    observer(bad)
    assert value(observer, "popsrv_metrics_malformed_events_total") == 1
    withoutCount = [line for line in observer.render().splitlines() if b"malformed" not in line]
    assert withoutCount == [line for line in before.splitlines() if b"malformed" not in line]


@pytest.mark.parametrize("commands", [
    "RETR",
    ["RETR"],
    {"RETR": 3},
    {"RETR": {"count": 1, "sum": 0.1}},
    {"RETR": {"count": 1, "sum": 0.1, "buckets": {"0.1": 2}}},
    {"RETR": {"count": 1, "sum": 0.1, "buckets": {"NaN": 1}}},
    {"RETR": {"count": 1, "sum": 0.1, "buckets": {"soon": 1}}},
    {"RETR": {"count": 1, "sum": 0.1, "buckets": {0.1: 1}}},
    {"RETR": {"count": 1, "sum": 0.1, "buckets": {"0.1": -1, "+Inf": 2}}},
    {"RETR": {"count": 1, "sum": "0.1", "buckets": {"0.1": 1}}},
    {f"X{i}": {"count": 0, "sum": 0.0, "buckets": {}} for i in range(100)},
])
def test_malformedCommandTimesAreLeftOutAlone(observer, commands):
    """
    A session-end whose command record is malformed still counts the
    session; only the record is left out (and counted as malformed).
    """
    observer(event("connect", listener="127.0.0.1:110", tls=False))
    observer(sessionEnd(commands=commands))
    assert value(observer, "popsrv_sessions_ended_total", reason="quit") == 1
    assert value(observer, "popsrv_connections_open", listener="127.0.0.1:110") == 0
    assert value(observer, "popsrv_metrics_malformed_events_total") == 1
    assert "popsrv_command_duration_seconds_count" not in observer.render().decode()


def test_eventsThatAreNotPopsrvsAreIgnored(observer):
    """
    Events of other namespaces, without an event name, or not even
    mappings are ignored without a word; the observer never raises.
    """
    for ignored in (
        {"event": "connect", "log_namespace": "someone.else", "listener": "x", "tls": False},
        {"event": "connect", "listener": "x", "tls": False},
        {"log_namespace": NAMESPACE},
        {"event": ["connect"], "log_namespace": NAMESPACE},
        {"event": "listening", "log_namespace": NAMESPACE, "address": "127.0.0.1:110"},
    ):
        observer(ignored)
    observer(None)  # type: ignore[arg-type]
    observer(42)  # type: ignore[arg-type]
    assert "popsrv_connections_total{" not in observer.render().decode()


def test_labelValuesStayFew(observer):
    """
    Mechanisms and commands outside popsrv's own are "other"; listeners
    and reasons are kept up to a limit, and long ones are "other": no
    event makes series without end.
    """
    observer(event("login", mechanism="SASL EVIL-" + "x" * 50))
    assert value(observer, "popsrv_logins_total", mechanism="other", result="ok") == 1
    times = CommandTimes()
    times.record("NOTACOMMAND", 0.001)
    observer(sessionEnd(commands=times.summary()))
    assert value(observer, "popsrv_command_duration_seconds_count", command="other") == 1
    observer = MetricsObserver()
    for index in range(MAX_LABEL_VALUES + 10):
        observer(event("connect", listener=f"10.0.0.{index}:110", tls=False))
    observer(event("connect", listener="x" * 1000, tls=False))
    listeners = {
        sample.labels["listener"]
        for family in observer.registry.collect() if family.name == "popsrv_connections"
        for sample in family.samples
    }
    assert len(listeners) == MAX_LABEL_VALUES + 1 and "other" in listeners
    assert value(observer, "popsrv_connections_total", listener="other", tls="false") == 11


def test_onAPublisherTheObserverStays():
    """
    Twisted drops an observer that raises; this one, fed every hostile
    event above through a real publisher, still counts afterwards.
    """
    publisher = LogPublisher()
    observer = MetricsObserver()
    publisher.addObserver(observer)
    log = Logger(namespace=NAMESPACE, observer=publisher)
    for bad in MALFORMED:
        publisher(dict(bad))
    log.info("{x}", x=math.nan, event="session-end", commands={"RETR": object()})
    log.info("connection", listener="127.0.0.1:110", tls=True, event="connect")
    assert value(observer, "popsrv_connections_total", listener="127.0.0.1:110", tls="true") == 1
    assert value(observer, "popsrv_metrics_malformed_events_total") == len(MALFORMED) + 1


# Serving

def test_resourceServesTheTextFormat(observer):
    """
    GET /metrics answers the metrics with Prometheus's content type;
    other paths are not found.
    """
    observer(event("stls"))
    site = metricsSite(observer)
    request = DummyRequest([b"metrics"])
    resource = site.getResourceFor(request)
    body = resource.render(request)
    (contentType,) = request.responseHeaders.getRawHeaders(b"content-type")
    assert contentType == CONTENT_TYPE_LATEST.encode() and contentType.startswith(b"text/plain; version=")
    assert b"popsrv_stls_total 1.0" in body
    missing = DummyRequest([b"other"])
    site.getResourceFor(missing).render(missing)
    assert missing.responseCode == 404


def test_theServiceBindsEarlyAndWatchesWhileRunning():
    """
    The endpoint is bound in privilegedStartService (before twistd drops
    root); the observer is on the publisher only while the service runs.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint

    reactor = MemoryReactorClock()
    publisher = LogPublisher()
    service = MetricsService(TCP4ServerEndpoint(reactor, 9110, interface="127.0.0.1"), publisher=publisher)
    service.privilegedStartService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(9110, "127.0.0.1")]
    log = Logger(namespace=NAMESPACE, observer=publisher)
    log.info("", event="stls")
    assert value(service.observer, "popsrv_stls_total") == 0
    service.startService()
    log.info("", event="stls")
    assert value(service.observer, "popsrv_stls_total") == 1
    service.stopService()
    log.info("", event="stls")
    assert value(service.observer, "popsrv_stls_total") == 1


# The option

def parse(*args: str) -> Options:
    """
    Parse popsrv's options, with a user.
    """
    options = Options()
    options.parseOptions(["--auth", "memory:alice:secret", *args])
    return options


def test_metricsOption():
    """
    --metrics takes an endpoint description, checked as --listen's are;
    none by default.
    """
    assert parse()["metrics"] is None
    assert parse("--metrics", "tcp:9110:interface=127.0.0.1")["metrics"] == "tcp:9110:interface=127.0.0.1"
    for bad, message in (("nonsense:1", "not a usable endpoint"), ("tcp:99999", "not between 0 and 65535")):
        with pytest.raises(usage.UsageError, match=f"--metrics '{bad}'.*{message}"):
            parse("--metrics", bad)


def servicesOf(service) -> list:
    """
    The child services of a service collection.
    """
    return list(service) if IServiceCollection.providedBy(service) else []


def test_makeServiceServesMetricsFirst(tmp_path):
    """
    With --metrics, the metrics service comes before the listeners (it
    watches the log before any connection), and sessions time their
    commands; without, neither.
    """
    reactor = MemoryReactorClock()
    service = makeService(
        parse("--maildir-root", str(tmp_path), "--listen", "tcp:1110", "--metrics", "tcp:9110"), reactor=reactor,
    )
    assert isinstance(servicesOf(service)[0], MetricsService)
    service.privilegedStartService()
    assert [port for port, *_ in reactor.tcpServers] == [9110, 1110]
    assert reactor.tcpServers[1][1].timeCommands
    plain = MemoryReactorClock()
    makeService(parse("--maildir-root", str(tmp_path), "--listen", "tcp:1110"), reactor=plain).privilegedStartService()
    assert [port for port, *_ in plain.tcpServers] == [1110] and not plain.tcpServers[0][1].timeCommands


def test_withWorkersTheParentServesTheMetrics(tmp_path):
    """
    With --workers the parent serves the metrics; a worker (given its own
    endpoints) serves none, but times its sessions' commands.
    """
    options = parse("--maildir-root", str(tmp_path), "--listen", "tcp:1110", "--metrics", "tcp:9110", "--workers", "2")
    parent = makeService(options, reactor=MemoryReactorClock())
    assert isinstance(servicesOf(parent)[0], MetricsService)
    from twisted.internet.endpoints import TCP4ServerEndpoint

    reactor = MemoryReactorClock()
    worker = makeService(
        options, reactor=reactor, endpointFor=lambda description: TCP4ServerEndpoint(reactor, 1110),
    )
    assert not any(isinstance(child, MetricsService) for child in servicesOf(worker))
    worker.privilegedStartService()
    assert [port for port, *_ in reactor.tcpServers] == [1110] and reactor.tcpServers[0][1].timeCommands
