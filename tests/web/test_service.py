"""``--http``: its option, and the service ``makeService`` builds for it."""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lttx.tap import makeService
from lttx.web.site import StatusSite

from ..test_tap import parse


def http_services(service: MultiService) -> list[MultiService]:
    from lttx.web.service import _HttpEndpointService

    return [child for child in service if isinstance(child, MultiService)
            and any(isinstance(s, _HttpEndpointService) for s in child)]


class HttpOptionTests(SynchronousTestCase):
    def test_http_is_off_by_default_and_repeatable(self) -> None:
        """No --http: no site; each --http is one more endpoint."""
        self.assertEqual(parse()["http"], [])
        options = parse("--http", "tcp:8025", "--http", "tcp:8026:interface=127.0.0.1")
        self.assertEqual(options["http"], ["tcp:8025", "tcp:8026:interface=127.0.0.1"])

    def test_make_service_listens_on_each_http_endpoint(self) -> None:
        """makeService adds a sampler and one HTTP listener per --http, on the reactor given."""
        reactor = MemoryReactorClock()
        options = parse("--http", "tcp:8025:interface=127.0.0.1", "--http", "tcp:8026",
                        "--data-dir", self.mktemp())
        service = makeService(options, reactor)
        [http] = http_services(service)
        listeners = [s for s in http if isinstance(s, StreamServerEndpointService)]
        self.assertEqual([type(s.factory) for s in listeners], [StatusSite, StatusSite])
        self.assertIs(listeners[0].factory, listeners[1].factory)
        self.assertEqual([type(s) for s in http if isinstance(s, TimerService)], [TimerService])
        for listener in listeners:
            listener.privilegedStartService()
            listener.startService()
            self.addCleanup(listener.stopService)
        self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers],
                         [(8025, "127.0.0.1"), (8026, "")])

    def test_no_http_no_site(self) -> None:
        """Without --http nothing listens for HTTP."""
        service = makeService(parse("--data-dir", self.mktemp()), MemoryReactorClock())
        self.assertEqual(http_services(service), [])
