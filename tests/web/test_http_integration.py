"""
The HTTP side of a real daemon (``--http``), driven as its users drive it:
Prometheus scraping ``/metrics``, scripts reading ``/status.json``, a load
balancer asking ``/healthz``, people logging in with a token.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

import lttx

from ..certs import CA, ssl_endpoint
from .common import HttpDaemon


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def families(text: str) -> dict[str, str]:
    """Each metric family's type."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def traffic(daemon: HttpDaemon, channel: str, count: int) -> Any:
    """``count`` messages pushed on ``channel`` to one subscriber, all received."""
    subscriber = daemon.daemon.connect(token="tok-admin")
    subscriber.subscribe(channel)
    publisher = daemon.daemon.connect(token="tok-admin")
    for i in range(count):
        publisher.push(f"k{i}", {"px": i}, channel)
    for _ in range(count):
        subscriber.Q.get(timeout=15)
    return publisher


class MetricsTests(TestCase):
    def test_metrics_count_the_traffic_per_channel(self) -> None:
        """/metrics parses as Prometheus text and its per-channel samples match what was sent."""
        daemon = HttpDaemon(self)
        traffic(daemon, "hq_ticks", 250)
        other = daemon.daemon.connect(token="tok-admin")
        other.push("k", 1, "quiet")  # no subscriber: retained in its log all the same
        other.put("pos", 1)  # applied after the push: its reply says the push was

        response = daemon.request("/metrics", token="tok-monitor")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.header("Content-Type").startswith("text/plain; version="))
        found = samples(response.text)
        hq = (("channel", "hq_ticks"),)
        self.assertEqual(found[("lttx_channel_messages_total", hq)], 250)
        self.assertEqual(found[("lttx_channel_subscribers", hq)], 1)
        self.assertEqual(found[("lttx_channel_messages_total", (("channel", "quiet"),))], 1)
        self.assertEqual(found[("lttx_channel_subscribers", (("channel", "quiet"),))], 0)
        self.assertEqual(found[("lttx_channels_published_total", ())], 251)
        self.assertEqual(found[("lttx_channels_delivered_total", ())], 250)
        self.assertEqual(found[("lttx_variables", ())], 1)
        self.assertEqual(found[("lttx_connections", ())], 3)
        self.assertEqual(found[("lttx_journal_writable", ())], 1)
        types = families(response.text)
        self.assertEqual(types["lttx_channel_messages"], "counter")
        self.assertEqual(types["lttx_channel_subscribers"], "gauge")
        self.assertEqual(types["lttx_channels_published"], "counter")


class StatusJsonTests(TestCase):
    def test_status_json_is_the_status_report(self) -> None:
        """/status.json equals what the status command reports (but for uptime and rates)."""
        daemon = HttpDaemon(self)
        traffic(daemon, "hq", 20)
        client = daemon.daemon.connect(token="tok-monitor")
        native = client.status()
        document = daemon.request("/status.json", token="tok-monitor").json()
        # What moves with the clock between the two requests: the uptime, and
        # the rates the channel registry samples once a second.
        for report in (native, document):
            self.assertIsInstance(report.pop("uptime"), float)
            for figures in report["channels"]["channels"].values():
                self.assertGreaterEqual(figures.pop("rate"), 0)
        self.assertEqual(document, native)
        self.assertEqual(document["channels"]["channels"]["hq"]["messages"], 20)

    def test_connections_list_each_connection_with_its_bytes(self) -> None:
        """/connections.json names each connection's token and counts its bytes."""
        daemon = HttpDaemon(self)
        traffic(daemon, "hq", 100)
        rows = daemon.request("/connections.json", token="tok-monitor").json()["connections"]
        self.assertEqual([row["token"] for row in rows], ["admin", "admin"])
        subscriber, publisher = rows
        self.assertEqual(subscriber["subscriptions"], 1)
        self.assertGreater(subscriber["bytes_out"], 100 * 10)  # the messages it was sent
        self.assertGreater(publisher["bytes_in"], 100 * 10)  # the pushes it sent
        self.assertLess(publisher["bytes_out"], 1000)  # its hello reply and subscribe-less self
        for row in rows:
            self.assertIsInstance(row["since"], float)
            self.assertEqual(row["kind"], "command")


class HealthTests(TestCase):
    def test_healthz_needs_no_token(self) -> None:
        """/healthz says ok, to anyone, and nothing else."""
        daemon = HttpDaemon(self)
        response = daemon.request("/healthz")
        self.assertEqual((response.status, response.text), (200, "ok\n"))


class AccessTests(TestCase):
    def test_each_token_gets_what_its_rights_allow(self) -> None:
        """No token or a wrong one: 401; a token without monitor: 403; monitor or all: 200."""
        daemon = HttpDaemon(self)
        for path in ("/status.json", "/metrics", "/connections.json", "/history.json"):
            self.assertEqual(daemon.request(path).status, 401, path)
            self.assertEqual(daemon.request(path).header("WWW-Authenticate"),
                             'Bearer realm="lttx"')
            self.assertEqual(daemon.request(path, token="tok-wrong").status, 401, path)
            refused = daemon.request(path, token="tok-reader")
            self.assertEqual(refused.status, 403, path)
            self.assertIn("may not monitor", refused.text)
            self.assertEqual(daemon.request(path, token="tok-monitor").status, 200, path)
            self.assertEqual(daemon.request(path, token="tok-admin").status, 200, path)
        self.assertEqual(daemon.request("/", token="tok-monitor").status, 200)
        page = daemon.request("/")
        self.assertEqual(page.status, 401)
        self.assertIn(b'action="/login"', page.body)  # a person gets the login form
        self.assertEqual(daemon.request("/nowhere", token="tok-admin").status, 404)

    def test_monitor_token_may_ask_status_and_nothing_else(self) -> None:
        """On the native port, a monitor token gets the status report and no variable."""
        daemon = HttpDaemon(self)
        admin = daemon.daemon.connect(token="tok-admin")
        admin.put("pos", 1)
        monitor = daemon.daemon.connect(token="tok-monitor")
        self.assertEqual(monitor.status()["variables"], 1)
        for call in (lambda: monitor.get("pos"), lambda: monitor.put("x", 1),
                     lambda: monitor.keys(), lambda: monitor.subscribe("hq"),
                     lambda: monitor.list_files()):
            self.assertRaises(lttx.PermissionDenied, call)
        reader = daemon.daemon.connect(token="tok-reader")
        self.assertRaises(lttx.PermissionDenied, reader.status)

    def test_token_in_the_address_becomes_a_session_cookie(self) -> None:
        """/?token= sets an HttpOnly SameSite=Strict cookie and redirects to / without it."""
        daemon = HttpDaemon(self)
        login = daemon.request("/?token=tok-monitor")
        self.assertEqual(login.status, 303)
        self.assertEqual(login.header("Location"), "/")
        cookie = login.header("Set-Cookie")
        self.assertRegex(cookie, r"^lttx_session=[A-Za-z0-9_-]{40,}; ")
        for attribute in ("Path=/", "HttpOnly", "SameSite=strict", "Max-Age=43200"):
            self.assertIn(attribute, cookie)
        self.assertNotIn("Secure", cookie)  # plain HTTP here
        session = cookie.split(";")[0]
        page = daemon.request("/", headers={"Cookie": session})
        self.assertEqual(page.status, 200)
        self.assertIn(b"chart-rates", page.body)
        self.assertEqual(daemon.request("/status.json", headers={"Cookie": session}).status, 200)
        forged = daemon.request("/status.json", headers={"Cookie": "lttx_session=forged"})
        self.assertEqual(forged.status, 401)
        self.assertEqual(daemon.request("/?token=tok-reader").status, 403)
        self.assertEqual(daemon.request("/?token=tok-wrong").status, 401)
        daemon.daemon.wait_for_log(r"HTTP 127\.0\.0\.1:\d+ logged in as grafana")

    def test_login_form_checks_the_origin(self) -> None:
        """POST /login from this daemon's page logs in; from another origin it is refused."""
        daemon = HttpDaemon(self)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        ours = dict(form, Origin=daemon.url)
        good = daemon.request("/login", method="POST", headers=ours, body=b"token=tok-admin")
        self.assertEqual(good.status, 303)
        session = good.header("Set-Cookie").split(";")[0]
        self.assertEqual(daemon.request("/", headers={"Cookie": session}).status, 200)
        wrong = daemon.request("/login", method="POST", headers=ours, body=b"token=nope")
        self.assertEqual(wrong.status, 401)
        self.assertIn(b"wrong token", wrong.body)
        theirs = dict(form, Origin="http://evil.example")
        forged = daemon.request("/login", method="POST", headers=theirs, body=b"token=tok-admin")
        self.assertEqual(forged.status, 403)
        self.assertIsNone(forged.header("Set-Cookie"))
        out = daemon.request("/logout", method="POST", headers={"Cookie": session, **ours})
        self.assertEqual(out.status, 303)
        self.assertEqual(daemon.request("/", headers={"Cookie": session}).status, 401)


class TLSTests(TestCase):
    def test_https_endpoint_and_secure_cookie(self) -> None:
        """--http ssl:... serves over TLS, and the session cookie is Secure there."""
        folder = self.mktemp()
        os.makedirs(folder)
        ca = CA.create("test-ca")
        key, cert = ca.issue(folder, "server", ["localhost"], ["127.0.0.1"])
        context = ssl.create_default_context(cafile=ca.write(folder))
        daemon = HttpDaemon(self, http=ssl_endpoint(key, cert), tls=context)
        self.assertEqual(daemon.request("/healthz").status, 200)
        login = daemon.request("/?token=tok-monitor")
        self.assertEqual(login.status, 303)
        cookie = login.header("Set-Cookie")
        self.assertIn("Secure", cookie)
        session = cookie.split(";")[0]
        report = daemon.request("/status.json", headers={"Cookie": session})
        self.assertEqual(report.status, 200)
        self.assertIn("channels", report.json())
