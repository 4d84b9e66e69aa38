"""
C{--metrics} end to end: a real server (one process, and C{--workers 2}),
real POP3 sessions over TCP on 127.0.0.1 with poplib, and C{/metrics}
scraped over HTTP and read with prometheus_client's own parser.
"""

from __future__ import annotations

import poplib
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from popsrv.store.maildir import deliver
from tests.support.servers import Launcher, Popsrv, writePasswordFile

HOST = "127.0.0.1"
DEADLINE = 20.0
METRICS_LOCAL = "tcp:0:interface=127.0.0.1"
METRICS_LISTENING = r"popsrv metrics on 127\.0\.0\.1:(\d+) at /metrics"
MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond message\n"]

Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """
    GET /metrics, parsed: each sample's value by its name and labels.
    """
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=DEADLINE) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """
    A sample's value; 0 if the scrape has none.
    """
    return samples.get((name, frozenset(labels.items())), 0.0)


def pollUntil(check: Callable[[], object], what: str, timeout: float = DEADLINE):
    """
    Call C{check} until it returns something true (or raises nothing but
    connection refusals), and return that; fail after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ConnectionError, urllib.error.URLError, poplib.error_proto) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"not {what} within {timeout} s; last: {last!r}")


def scrapeWhen(port: int, condition: Callable[[Samples], bool], what: str) -> Samples:
    """
    Scrape until C{condition} holds (workers relay their events to the
    parent as they come, not at once).
    """
    return pollUntil(lambda: (lambda samples: samples if condition(samples) else None)(scrape(port)), what)


def scrapeSettled(port: int, condition: Callable[[Samples], bool]) -> Samples:
    """
    Scrape until C{condition} holds, or the deadline passes; return the
    last scrape either way, for the test to show what differs.
    """
    deadline = time.monotonic() + DEADLINE
    samples = scrape(port)
    while not condition(samples) and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = scrape(port)
    return samples


def waitForWorkers(server: Popsrv, count: int) -> None:
    """
    Wait until workers 0 to C{count - 1} said they are ready.
    """
    for index in range(count):
        server.twistd.waitFor(rf"worker {index}\] worker ready", DEADLINE)


def connect(port: int) -> poplib.POP3:
    """
    A POP3 client connected to 127.0.0.1:C{port}, greeted.
    """
    return poplib.POP3(HOST, port, timeout=DEADLINE)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "two workers"])
def test_oneScrapeCountsEverySession(launcher: Launcher, workers: list) -> None:
    """
    Logins (one accepted, one [IN-USE], one wrong password), a RETR, a
    DELE applied at QUIT and a connection refused by
    --max-connections-per-ip are counted exactly, by the process that
    serves /metrics: with workers, the parent, for all of them.
    """
    server = launcher.popsrv("--metrics", METRICS_LOCAL, "--max-connections-per-ip", "2", *workers)
    metricsPort = int(server.twistd.waitFor(METRICS_LISTENING, DEADLINE).group(1))
    for message in MESSAGES:
        deliver(server.maildir("alice"), message)
    if workers:
        waitForWorkers(server, 2)
    listener = f"{HOST}:{server.port}"

    # alice logs in, retrieves message 1 and deletes it; meanwhile a
    # second login of hers finds the maildrop in use.
    alice = connect(server.port)
    alice.user("alice")
    alice.pass_(server.users["alice"])
    other = connect(server.port)
    other.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        other.pass_(server.users["alice"])
    other.quit()
    retrieved = alice.retr(1)
    assert b"".join(line + b"\r\n" for line in retrieved[1]) == MESSAGES[0].replace(b"\n", b"\r\n")
    alice.dele(1)
    alice.quit()

    # The server may close a connection after its client got the last
    # reply: each connection counts against --max-connections-per-ip until
    # its session ended.
    def ended(count: int) -> Samples:
        return scrapeWhen(
            metricsPort, lambda s: value(s, "popsrv_sessions_ended_total", reason="quit") >= count,
            f"{count} sessions ended",
        )

    ended(2)

    # bob gives a wrong password.
    bob = connect(server.port)
    bob.user("bob")
    with pytest.raises(poplib.error_proto, match="-ERR"):
        bob.pass_("not bob's password")
    bob.quit()
    ended(3)

    # Two connections from 127.0.0.1 are its share: a third is refused.
    held = [connect(server.port) for _ in range(2)]
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] too many connections"):
        connect(server.port)
    for client in held:
        client.quit()

    expected = {
        ("popsrv_connections_total", (("listener", listener), ("tls", "false"))): 5,
        ("popsrv_connections_open", (("listener", listener),)): 0,
        ("popsrv_connections_refused_total", (("reason", "address"),)): 1,
        ("popsrv_connections_refused_total", (("reason", "server"),)): 0,
        ("popsrv_logins_total", (("mechanism", "USER/PASS"), ("result", "ok"))): 1,
        ("popsrv_logins_total", (("mechanism", "USER/PASS"), ("result", "failed"))): 1,
        ("popsrv_logins_total", (("mechanism", "USER/PASS"), ("result", "unavailable"))): 0,
        ("popsrv_maildrop_in_use_total", ()): 1,
        ("popsrv_login_penalty_seconds_count", ()): 0,
        ("popsrv_retrieved_messages_total", ()): 1,
        ("popsrv_retrieved_bytes_total", ()): len(MESSAGES[0].replace(b"\n", b"\r\n")),
        ("popsrv_deleted_messages_total", ()): 1,
        ("popsrv_sessions_ended_total", (("reason", "quit"),)): 5,
        ("popsrv_session_duration_seconds_count", ()): 5,
        ("popsrv_command_duration_seconds_count", (("command", "USER"),)): 3,
        ("popsrv_command_duration_seconds_count", (("command", "PASS"),)): 3,
        ("popsrv_command_duration_seconds_count", (("command", "RETR"),)): 1,
        ("popsrv_command_duration_seconds_count", (("command", "DELE"),)): 1,
        ("popsrv_command_duration_seconds_count", (("command", "QUIT"),)): 5,
        ("popsrv_stls_total", ()): 0,
        ("popsrv_metrics_malformed_events_total", ()): 0,
    }


    def counts(samples: Samples) -> dict:
        return {key: value(samples, key[0], **dict(key[1])) for key in expected}

    # Each worker's events come through a pipe of its own: one worker's
    # last events may arrive after another's.
    samples = scrapeSettled(metricsPort, lambda s: counts(s) == expected)
    assert counts(samples) == expected
    assert sum(v for (name, labels), v in samples.items() if name == "popsrv_storage_errors_total") == 0
    # Every PASS is timed, the failed one with its pause before the answer.
    assert value(samples, "popsrv_command_duration_seconds_sum", command="PASS") >= 1.0
    # The metrics site serves nothing else.
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://{HOST}:{metricsPort}/", timeout=DEADLINE)
    assert error.value.code == 404


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def test_workersEventsCountWhateverTheLogLevel(launcher: Launcher, tmp_path: Path) -> None:
    """
    Under C{twist --log-level warn}, the log shows no session, but the
    workers still relay every event to the parent, whose metrics count
    them: the level filters the log's output, not what the metrics see.
    """
    users = {"alice": "secret"}
    passwords = writePasswordFile(tmp_path / "passwd", users)
    deliver(str(tmp_path / "mail" / "alice"), MESSAGES[0])
    popPort, metricsPort = freePort(), freePort()
    process = launcher.twistd(
        ["--listen", f"tcp:{popPort}:interface={HOST}", "--maildir-root", str(tmp_path / "mail"),
         "--auth", f"file:{passwords}", "--workers", "2", "--metrics", f"tcp:{metricsPort}:interface={HOST}"],
        tmp_path, twistArgs=["--log-level", "warn"],
    )
    pollUntil(lambda: scrape(metricsPort), "the metrics served")

    def session() -> bool:
        client = connect(popPort)
        client.user("alice")
        client.pass_("secret")
        client.retr(1)
        client.quit()
        return True

    pollUntil(session, "a session served")
    samples = scrapeWhen(
        metricsPort, lambda s: value(s, "popsrv_sessions_ended_total", reason="quit") >= 1, "the session ended",
    )
    assert value(samples, "popsrv_logins_total", mechanism="USER/PASS", result="ok") == 1
    assert value(samples, "popsrv_retrieved_messages_total") == 1
    assert value(samples, "popsrv_command_duration_seconds_count", command="RETR") == 1
    output = process.output
    assert "logged in" not in output and "session of" not in output and "popsrv listening" not in output
