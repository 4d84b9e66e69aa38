"""
Serving the metrics of C{--metrics ENDPOINT}: L{MetricsService} has a
L{MetricsObserver} watch the log while it serves its counts in
Prometheus's text format at C{/metrics} on the endpoint, and nothing
elsewhere (no access log either).
"""

from __future__ import annotations

from typing import Any, Optional

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.application.service import MultiService
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import LogPublisher, globalLogPublisher
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from popsrv.app.listening import ListeningService
from popsrv.app.metrics import MetricsObserver

__all__ = ["HTTP_TIMEOUT", "METRICS_PATH", "MetricsResource", "MetricsService", "metricsSite"]

METRICS_PATH = b"metrics"
# Seconds an idle HTTP connection of a scraper is kept (Prometheus keeps
# its connection open between scrapes, by default 15 s to a minute apart).
HTTP_TIMEOUT = 300


class MetricsResource(Resource):
    """
    C{/metrics}: an observer's metrics in Prometheus's text format.
    """

    isLeaf = True

    def __init__(self, observer: MetricsObserver) -> None:
        super().__init__()
        self._observer = observer

    def render_GET(self, request: IRequest) -> bytes:
        """
        The metrics, made now: 16 KB of text in about a millisecond
        (C{benchmarks/command_timing.py}), once a scrape, no reason to
        leave the reactor's thread.
        """
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self._observer.render()


class _QuietSite(Site):
    """
    A web site without an access log: a scraper's request every few
    seconds would fill the server's log.
    """

    noisy = False
    displayTracebacks = False

    def logPrefix(self) -> str:
        """
        How Twisted names this site in its log lines ("... starting on
        PORT").
        """
        return "popsrv metrics"

    def startFactory(self) -> None:
        """
        Start serving (no access log to open, nor its clock to keep).
        """

    def stopFactory(self) -> None:
        """
        Stop serving.
        """

    def log(self, request: object) -> None:
        """
        Log nothing of a request.
        """


class _Root(Resource):
    """
    The root of the metrics' web site: C{/metrics}, and 404 elsewhere.
    """

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        """
        Not found: the only child is C{/metrics}.
        """
        return notFound()


def metricsSite(observer: MetricsObserver) -> Site:
    """
    The web site of C{--metrics}: the metrics at C{/metrics}, nothing
    elsewhere.
    """
    root = _Root()
    root.putChild(METRICS_PATH, MetricsResource(observer))
    return _QuietSite(root, timeout=HTTP_TIMEOUT)


class MetricsService(MultiService):
    """
    Serves the metrics of a L{MetricsObserver} on an endpoint while the
    service runs, and has the observer watch the log meanwhile.

    The endpoint is bound in C{privilegedStartService}, as the POP3
    listeners are (L{ListeningService}), so a port below 1024 works after
    twistd drops root; it is logged as C{metrics-listening}, with its
    C{address}.

    @ivar observer: the L{MetricsObserver}.
    @ivar listening: the L{ListeningService} of the endpoint.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        observer: Optional[MetricsObserver] = None,
        publisher: LogPublisher = globalLogPublisher,
    ) -> None:
        super().__init__()
        self.observer = observer if observer is not None else MetricsObserver()
        self._publisher = publisher
        self.listening = ListeningService(
            endpoint, metricsSite(self.observer),
            logFormat="popsrv metrics on {address} at /metrics", event="metrics-listening",
        )
        self.listening.setServiceParent(self)

    def startService(self) -> None:
        """
        Watch the log, and serve (binding the endpoint unless it is already).
        """
        # On the publisher itself, not behind a level filter of the log's
        # output (twist --log-level): every event counts.
        self._publisher.addObserver(self.observer)
        super().startService()

    def stopService(self) -> Any:
        """
        Stop serving and watching the log.
        """
        self._publisher.removeObserver(self.observer)
        return super().stopService()
