"""
The HTTP site in memory: requests written to its protocol over a
``StringTransport``, responses read back, time on a ``Clock``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lttx.errors import StorageError
from lttx.server.state import ServerState
from lttx.state.auth import Grant, TokenAuthenticator
from lttx.state.store import MemoryStore
from lttx.storage.durable import DurableStore, InlineLane
from lttx.web.access import SESSION_LIFETIME, Sessions
from lttx.web.history import History
from lttx.web.site import make_site

from ..storage.test_durable import ManualLane

ROLES = [("tok-admin", Grant.everything("admin")),
         ("tok-monitor", Grant.parse("grafana", ["monitor"])),
         ("tok-reader", Grant.parse("reader", ["read"]))]


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """A transport the request takes for TLS (``request.isSecure()``)."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        """As a TLS transport over TCP would."""

    def getPeerCertificate(self) -> None:
        return None


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def request(site: Any, path: str, headers: Optional[dict[str, str]] = None,
            peer: str = "127.0.0.1", transport: Optional[StringTransport] = None,
            method: str = "GET", body: bytes = b"") -> Reply:
    """One HTTP/1.0 request through the site's protocol; its whole reply."""
    protocol = site.buildProtocol(IPv4Address("TCP", peer, 40000))
    transport = transport or StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    protocol.makeConnection(transport)
    lines = [f"{method} {path} HTTP/1.0", "Host: 127.0.0.1:8025"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    # Split at an awkward point: the parser must not care.
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    protocol.dataReceived(data[:7])
    protocol.dataReceived(data[7:])
    return Reply(transport.value())


class SiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.directory = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(self.directory, True))

    def site(self, store: Any = None, roles: Any = ROLES, **sources: Any) -> Any:
        store = store if store is not None else MemoryStore()
        auth = TokenAuthenticator.from_roles(roles) if roles else TokenAuthenticator()
        state = ServerState(store, auth, clock=self.clock, status_sources=sources)
        self.state = state
        channels = state.channels
        self.history = History(lambda: (channels.published, channels.delivered,
                                        len(state.connections)), self.clock.seconds)
        return make_site(state, self.history, self.clock)

    def test_healthz_turns_503_when_the_journal_cannot_be_written(self) -> None:
        """A journal write failing (a full disk) makes /healthz 503 with the reason only."""
        lane = ManualLane()
        store = DurableStore.open(os.path.join(self.directory, "variables"), "always",
                                  self.clock, lane, InlineLane())
        site = self.site(store, journal=store)
        self.assertEqual(request(site, "/healthz").status, 200)
        written = store.put("x", 1)
        self.clock.advance(0)
        _, _, job = lane.jobs.pop(0)
        job.errback(OSError(28, "No space left on device"))
        self.assertNoResult(written)  # held until the journal can be written
        self.assertRaises(StorageError, store.put, "y", 2)
        reply = request(site, "/healthz")
        self.assertEqual((reply.status, reply.body),
                         (503, b"unavailable: the journal is not writable\n"))
        status = request(site, "/status.json", {"Authorization": "Bearer tok-monitor"})
        self.assertIn(b'"writable": false', status.body)
        metrics = request(site, "/metrics", {"Authorization": "Bearer tok-monitor"})
        found = {s.name: s.value for f in text_string_to_metric_families(metrics.body.decode())
                 for s in f.samples}
        self.assertEqual(found["lttx_journal_writable"], 0)
        self.flushLoggedErrors(OSError)
        stopped = store.stopService()
        lane.release_all()
        self.successResultOf(stopped)

    def test_healthz_turns_503_when_the_engine_is_unavailable(self) -> None:
        """An engine whose Redis is disconnected makes /healthz 503."""

        class Engine:
            role = "master"

            def status(self) -> dict[str, Any]:
                return {"engine": "redis", "role": self.role}

        engine = Engine()
        site = self.site(engine=engine)
        self.assertEqual(request(site, "/healthz").status, 200)
        engine.role = "disconnected"
        reply = request(site, "/healthz")
        self.assertEqual(reply.status, 503)
        self.assertEqual(reply.body, b"unavailable: the engine is unavailable "
                                     b"(Redis disconnected)\n")

    def test_protected_mode_serves_loopback_only(self) -> None:
        """Without a token, loopback clients see everything; others get 403."""
        site = self.site(roles=None)
        self.assertEqual(request(site, "/status.json").status, 200)
        self.assertEqual(request(site, "/").status, 200)
        remote = request(site, "/status.json", peer="10.1.2.3")
        self.assertEqual(remote.status, 403)
        self.assertIn(b"loopback clients only", remote.body)
        self.assertEqual(request(site, "/healthz", peer="10.1.2.3").status, 200)

    def test_protected_mode_gives_remote_peers_no_session(self) -> None:
        """Without a token, a remote peer cannot log in by any token either."""
        site = self.site(roles=None)
        reply = request(site, "/?token=anything", peer="10.1.2.3")
        self.assertEqual(reply.status, 403)
        self.assertIsNone(reply.header("Set-Cookie"))
        self.assertEqual(len(site.gate.sessions), 0)

    def test_large_request_body_is_refused(self) -> None:
        """A body over 16 KiB is not read: the connection is dropped."""
        site = self.site()
        protocol = site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 4))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4))
        protocol.makeConnection(transport)
        protocol.dataReceived(b"POST /login HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: 100000000\r\n\r\n")
        for _ in range(5):
            protocol.dataReceived(b"t" * 8192)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(transport.value(), b"")

    def test_idle_connection_is_closed(self) -> None:
        """An HTTP connection that sends nothing is closed after a minute."""
        site = self.site()
        protocol = site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 4))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4))
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /healthz HTTP/1.1\r\n")
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_bearer_scheme_is_required(self) -> None:
        """Authorization other than Bearer TOKEN is a 401 saying how."""
        site = self.site()
        reply = request(site, "/metrics", {"Authorization": "Basic dG9rLWFkbWlu"})
        self.assertEqual(reply.status, 401)
        self.assertIn(b"Authorization: Bearer TOKEN", reply.body)

    def test_session_expires(self) -> None:
        """A session cookie opens the pages until its lifetime is over."""
        site = self.site()
        login = request(site, "/?token=tok-monitor")
        cookie = login.header("Set-Cookie").split(";")[0]
        self.clock.advance(SESSION_LIFETIME - 1)
        self.assertEqual(request(site, "/status.json", {"Cookie": cookie}).status, 200)
        self.clock.advance(1)
        reply = request(site, "/status.json", {"Cookie": cookie})
        self.assertEqual(reply.status, 401)
        self.assertIn(b"expired", reply.body)

    def test_cookie_is_secure_over_tls(self) -> None:
        """Over TLS the session cookie carries the Secure flag."""
        site = self.site()
        transport = TLSStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4))
        cookie = request(site, "/?token=tok-admin", transport=transport).header("Set-Cookie")
        self.assertIn("Secure", cookie)
        self.assertIn("HttpOnly", cookie)

    def test_page_and_assets(self) -> None:
        """The page comes with a strict content policy; its assets need no token."""
        site = self.site()
        page = request(site, "/", {"Authorization": "Bearer tok-admin"})
        self.assertEqual(page.status, 200)
        self.assertIn("script-src 'self'", page.header("Content-Security-Policy"))
        self.assertIn(b'<script src="/static/app.js"', page.body)
        assets = (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css"))
        for path, kind in assets:
            asset = request(site, path)
            self.assertEqual(asset.status, 200)
            self.assertTrue(asset.header("Content-Type").startswith(kind))
            self.assertGreater(len(asset.body), 1000)

    def test_history_json_gives_the_samples_after_a_time(self) -> None:
        """/history.json?since=T lists the samples taken after T."""
        site = self.site()
        for _ in range(4):
            self.history.sample()
            self.clock.advance(1)
        reply = request(site, "/history.json?since=1800000001.5",
                        {"Authorization": "Bearer tok-admin"})
        self.assertIn(b'"samples": [[1800000002.0, 0.0, 0.0, 0], [1800000003.0, 0.0, 0.0, 0]]',
                      reply.body)


class SessionsTests(SynchronousTestCase):
    def test_sessions_are_bounded(self) -> None:
        """Past the limit, the oldest session is forgotten."""
        clock = Clock()
        sessions = Sessions(clock.seconds, limit=3)
        grant = Grant.everything()
        ids = [sessions.open(grant) for _ in range(5)]
        self.assertEqual(len(sessions), 3)
        self.assertIsNone(sessions.grant_of(ids[0]))
        self.assertIs(sessions.grant_of(ids[4]), grant)
        self.assertEqual(len(set(ids)), 5)


class HistoryTests(SynchronousTestCase):
    def test_rates_from_counters_in_a_bounded_ring(self) -> None:
        """Each sample is the counters' difference per second; the ring keeps `size`."""
        clock = Clock()
        counters = [0, 0, 2]
        history = History(lambda: tuple(counters), clock.seconds, size=3)  # type: ignore
        history.sample()  # the baseline
        for step in range(1, 6):
            clock.advance(2)
            counters[0] += 100 * step
            counters[1] += 300 * step
            history.sample()
        self.assertEqual(list(history.samples), [[6.0, 150.0, 450.0, 2], [8.0, 200.0, 600.0, 2],
                                                 [10.0, 250.0, 750.0, 2]])


class MetricsTests(SynchronousTestCase):
    def test_new_report_keys_appear_without_code_changes(self) -> None:
        """Per-channel and component keys the report gains become samples as they are."""
        from lttx.web.metrics import exposition

        report = {"version": "9", "connections": 1,
                  "channels": {"channels": {"hq": {"messages": 5, "log_bytes": 640,
                                                   "oldest_seq": 2, "slowest": "a:1",
                                                   "password": True}},
                               "published": 5},
                  "journal": {"writable": False, "last_compaction": {"seconds": 0.5}}}
        text = exposition(report).decode()
        found = {(s.name, tuple(s.labels.items())): s.value
                 for f in text_string_to_metric_families(text) for s in f.samples}
        hq = (("channel", "hq"),)
        self.assertEqual(found[("lttx_channel_log_bytes", hq)], 640)
        self.assertEqual(found[("lttx_channel_oldest_seq", hq)], 2)
        self.assertEqual(found[("lttx_channel_password", hq)], 1)
        self.assertEqual(found[("lttx_channel_messages_total", hq)], 5)
        self.assertNotIn(("lttx_channel_slowest", hq), found)  # not a number
        self.assertEqual(found[("lttx_journal_writable", ())], 0)
        self.assertEqual(found[("lttx_journal_last_compaction_seconds", ())], 0.5)
        self.assertEqual(found[("lttx_build_info", (("version", "9"),))], 1)

    def test_engine_daemons_and_replicas_are_labels(self) -> None:
        """The engine's daemons and replicas: one metric per figure, labelled by daemon
        id and replica address (ids change at every start: never in a metric's name)."""
        from lttx.web.metrics import exposition

        report = {"engine": {"role": "master", "connects": 2, "daemons": {
            "aa11": {"host": "h1", "pid": 7, "listening": ["10.0.0.1:2025"], "seen": 5.0,
                     "seen_ago": 0.4},
            "bb22": {"host": "h2", "pid": 8, "listening": [], "seen": 4.0, "seen_ago": 1.5}},
            "replication": {"role": "master", "offset": 900, "replicas": [
                {"address": "10.0.0.9:6380", "state": "online", "offset": 880,
                 "lag_bytes": 20, "lag_s": 1}]}}}
        text = exposition(report).decode()
        found = {(s.name, tuple(s.labels.items())): s.value
                 for f in text_string_to_metric_families(text) for s in f.samples}
        self.assertEqual(found[("lttx_engine_daemons", ())], 2)
        self.assertEqual(found[("lttx_engine_daemon_seen_ago_seconds",
                                (("daemon", "bb22"), ("host", "h2")))], 1.5)
        replica = (("replica", "10.0.0.9:6380"),)
        self.assertEqual(found[("lttx_engine_replica_lag_bytes", replica)], 20)
        self.assertEqual(found[("lttx_engine_replica_lag_seconds", replica)], 1)
        self.assertEqual(found[("lttx_engine_replica_online", replica)], 1)
        self.assertEqual(found[("lttx_engine_replication_offset", ())], 900)
        self.assertEqual(found[("lttx_engine_connects_total", ())], 2)
        self.assertFalse([name for name, _ in found if "aa11" in name or "bb22" in name])
        self.assertEqual(report["engine"]["daemons"]["aa11"]["pid"], 7)  # left as it was


class StatusReportsTests(SynchronousTestCase):
    def test_one_report_a_second_serves_every_request(self) -> None:
        """HTTP requests within a second share one report; the next second makes a new one."""
        from lttx.web.report import StatusReports

        clock = Clock()
        made = []

        class State:
            def status(self) -> dict[str, Any]:
                made.append(clock.seconds())
                return {"n": len(made)}

        reports = StatusReports(State(), clock.seconds)  # type: ignore[arg-type]
        self.assertEqual([reports.get()["n"] for _ in range(5)], [1] * 5)
        clock.advance(0.999)
        self.assertEqual(reports.get()["n"], 1)
        clock.advance(0.001)
        self.assertEqual(reports.get()["n"], 2)
        self.assertEqual(made, [0.0, 1.0])


class ConnectionsReportTests(SynchronousTestCase):
    def test_file_transfer_in_flight_is_listed_with_its_progress(self) -> None:
        """A file connection shows its upload or download: file, bytes done, size."""
        from lttx.web.report import connections_report

        class SimpleNamespace:
            def __init__(self, **attributes: Any) -> None:
                self.__dict__.update(attributes)

        state = ServerState(MemoryStore(), TokenAuthenticator("t"))
        grant = Grant.everything("reports")
        upload = SimpleNamespace(name="a.csv", received=300, size=1000)
        download = SimpleNamespace(name="b.csv", done=50, size=100)
        for peer, since, session in (
                ("1.2.3.4:1", 1.0, SimpleNamespace(upload=upload, download=None)),
                ("1.2.3.4:2", 2.0, SimpleNamespace(upload=None, download=download)),
                ("1.2.3.4:3", 3.0, None)):
            state.connection_made(SimpleNamespace(  # type: ignore[arg-type]
                peer=peer, authenticated=True, grant=grant, since=since, bytes_in=1,
                bytes_out=2, outbox=None, file_session=session))
        rows = connections_report(state)["connections"]
        self.assertEqual([(r["kind"], r["transfer"]) for r in rows], [
            ("file", {"kind": "upload", "name": "a.csv", "done": 300, "size": 1000}),
            ("file", {"kind": "download", "name": "b.csv", "done": 50, "size": 100}),
            ("command", None)])
        self.assertEqual(connections_report(state, limit=1)["total"], 3)
