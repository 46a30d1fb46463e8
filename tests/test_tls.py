"""
TLS end to end: the real daemon on an ``ssl:`` endpoint, the blocking client
with ``tls=True, ca=...``; certificates are made for each test run.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

import lttx
from lttx.client import AsyncClient, ConnectionSettings

from .certs import CA, ssl_endpoint
from .common import Daemon


class TLSTests(TestCase):
    """The client verifies the daemon's certificate chain and host name."""

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.ca = CA.create("test-ca")
        self.ca_path = self.ca.write(self.folder)

    def tls_daemon(self, dns_names: list[str], ip_addresses: list[str],
                   *args: str) -> Daemon:
        key, cert = self.ca.issue(self.folder, "server", dns_names, ip_addresses)
        return Daemon(self, *args, listen=[ssl_endpoint(key, cert)])

    def test_round_trip(self) -> None:
        """Over TLS, variables round-trip and the daemon logs the ssl: endpoint."""
        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"])
        self.assertIn("LTtx listening on ssl:0:", daemon.log_text())
        client = daemon.connect(tls=True, ca=self.ca_path)
        client.put("pos", {"600000.SH": 100, "raw": b"\x00\xff"})
        self.assertEqual(client.get("pos"), {"600000.SH": 100, "raw": b"\x00\xff"})
        self.assertEqual(client.ping(), "pong")

    def test_host_name_is_verified(self) -> None:
        """A certificate naming localhost serves a client connecting to "localhost"."""
        daemon = self.tls_daemon(["localhost"], [])
        client = lttx.connect("localhost", daemon.port, token=daemon.token, timeout=15,
                              tls=True, ca=self.ca_path)
        self.addCleanup(client.close)
        self.assertEqual(client.ping(), "pong")

    def test_wrong_host_name_is_refused(self) -> None:
        """A certificate for another host fails with a TLSError saying so; nothing is served."""
        daemon = self.tls_daemon(["elsewhere.example"], ["192.0.2.7"])
        with self.assertRaises(lttx.TLSError) as caught:
            daemon.connect(tls=True, ca=self.ca_path)
        message = str(caught.exception)
        self.assertIn("wrong host name", message)
        self.assertIn("'127.0.0.1'", message)
        self.assertIsInstance(caught.exception, lttx.ConnectError)
        # hello was never sent: the daemon authenticated no one.
        self.assertEqual([line for line in daemon.lines if line.endswith(" connected")], [])

    def test_wrong_ca_is_refused(self) -> None:
        """A certificate signed by a CA the client does not trust fails with a TLSError."""
        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"])
        other_folder = os.path.join(self.folder, "other")
        os.makedirs(other_folder)
        other_ca = CA.create("other-ca").write(other_folder)
        with self.assertRaises(lttx.TLSError) as caught:
            daemon.connect(tls=True, ca=other_ca)
        message = str(caught.exception)
        self.assertIn("untrusted certificate", message)
        self.assertIn(other_ca, message)
        # The client's alert tells the daemon why; it says so in one line.
        daemon.wait_for_log(r"127\.0\.0\.1:\d+: TLS handshake failed: .*unknown ca")

    def test_ca_bundle_with_the_right_ca_is_trusted(self) -> None:
        """A CA file holding several certificates trusts each of them."""
        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"])
        bundle = os.path.join(self.folder, "bundle.pem")
        with open(bundle, "wb") as out:
            for ca in (CA.create("first-ca"), self.ca):
                out.write(open(ca.write(self.folder), "rb").read())
        client = daemon.connect(tls=True, ca=bundle)
        self.assertEqual(client.ping(), "pong")

    def test_intermediate_ca_chain(self) -> None:
        """A certificate from an intermediate CA, sent with extraCertChain, is trusted
        by a client that knows only the root CA; without the chain it is not."""
        intermediate = self.ca.intermediate("intermediate-ca")
        key, cert = intermediate.issue(self.folder, "server", ["localhost"], ["127.0.0.1"])
        chain = intermediate.write(self.folder)
        daemon = Daemon(self, listen=[ssl_endpoint(key, cert, chain)])
        client = daemon.connect(tls=True, ca=self.ca_path)
        self.assertEqual(client.ping(), "pong")
        without_chain = Daemon(self, listen=[ssl_endpoint(key, cert)])
        with self.assertRaises(lttx.TLSError) as caught:
            without_chain.connect(tls=True, ca=self.ca_path)
        self.assertIn("untrusted certificate", str(caught.exception))

    def test_unreadable_ca_file(self) -> None:
        """A missing CA file is a TLSError naming it, before any connection."""
        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"])
        missing = os.path.join(self.folder, "missing.pem")
        with self.assertRaises(lttx.TLSError) as caught:
            daemon.connect(tls=True, ca=missing)
        self.assertIn(f"cannot read the CA file {missing}", str(caught.exception))

    def test_tls_client_against_plain_daemon(self) -> None:
        """A TLS client reaching a plain TCP daemon gets a TLSError, not a hang."""
        daemon = Daemon(self)
        with self.assertRaises(lttx.TLSError) as caught:
            daemon.connect(tls=True, ca=self.ca_path)
        self.assertIn("is the daemon listening with TLS", str(caught.exception))

    def test_plain_client_against_tls_daemon(self) -> None:
        """A client without tls=True on a TLS port loses its connection; the daemon logs why."""
        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"])
        self.assertRaises(lttx.ConnectionLost, daemon.connect, timeout=5)
        daemon.wait_for_log(r"127\.0\.0\.1:\d+: TLS handshake failed: ")

    def test_cancelled_handshake_closes_the_connection(self) -> "Deferred[None]":
        """Cancelling a connect stuck in the handshake aborts the TCP connection."""
        from twisted.internet import reactor

        hello: Deferred[None] = Deferred()
        lost: Deferred[None] = Deferred()

        class Silent(Protocol):
            # Takes the ClientHello and never answers it.
            def dataReceived(self, data: bytes) -> None:
                if not hello.called:
                    hello.callback(None)

            def connectionLost(self, reason: object = None) -> None:
                lost.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        settings = ConnectionSettings("127.0.0.1", port.getHost().port, "t", 5,
                                      tls=True, ca=self.ca_path)
        connecting = AsyncClient.connect(reactor, settings)
        hello.addCallback(lambda _: connecting.cancel())
        # The client reports a cancelled connect as a ConnectError.
        failed = self.assertFailure(connecting, lttx.ConnectError)
        return failed.addCallback(lambda _: lost)

    test_cancelled_handshake_closes_the_connection.timeout = 30  # type: ignore[attr-defined]
