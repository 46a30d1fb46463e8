"""
TLS end to end: the real daemon on an ``ssl:`` endpoint, the blocking client
with ``tls=True, ca=...``; certificates are made for each test run.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
from typing import Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.basic import FileSender
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

import lttx
from lttx.client import AsyncClient, ConnectionSettings
from lttx.client.eventloop import EventLoop

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

    def test_close_is_prompt(self) -> None:
        """Closing a TLS client completes its TLS shutdown: close() fires at once,
        not when the daemon gives up on the connection."""
        from twisted.internet import reactor

        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"])
        settings = ConnectionSettings("127.0.0.1", daemon.port, daemon.token, timeout=60,
                                      tls=True, ca=self.ca_path)

        def connected(client: AsyncClient) -> Deferred[None]:
            d = client.close()
            # Far below the 60 s a stuck shutdown would take, far above a slow machine's.
            d.addTimeout(20, reactor)
            return d.addCallback(lambda _: daemon.wait_for_log("disconnected"))

        return AsyncClient.connect(reactor, settings).addCallback(connected)

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

    def test_file_transfer_over_tls(self) -> None:
        """send_file and recv_file use the client's TLS settings on their own connections."""
        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"])
        client = daemon.connect(tls=True, ca=self.ca_path)
        data = os.urandom(3 * 1024 * 1024 + 17)
        source = os.path.join(self.folder, "ticks.bin")
        with open(source, "wb") as f:
            f.write(data)
        self.assertEqual(client.send_file(source)["md5"], hashlib.md5(data).hexdigest())
        downloads = os.path.join(self.folder, "downloads")
        os.makedirs(downloads)
        with open(client.recv_file("ticks.bin", downloads)["path"], "rb") as f:
            self.assertEqual(f.read(), data)

    @inlineCallbacks
    def test_close_over_tls(self) -> Generator[Any, Any, None]:
        """The Twisted-native client's close() ends a TLS connection without waiting on
        the daemon (a TLS transport holds the close while a producer is registered)."""
        from twisted.internet import reactor

        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"])
        settings = ConnectionSettings("127.0.0.1", daemon.port, daemon.token, 10,
                                      tls=True, ca=self.ca_path)
        client = yield AsyncClient.connect(reactor, settings)
        self.assertEqual((yield client.ping()), "pong")
        yield client.close()
        self.assertFalse(client.connected)

    test_close_over_tls.timeout = 8  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_daemon_closes_a_tls_subscriber_on_a_fatal_error(self) -> Generator[Any, Any, None]:
        """A subscriber (its outbox is the transport's producer) that sends a frame
        over the limit is disconnected over TLS too, not left open."""
        from twisted.internet import reactor

        daemon = self.tls_daemon(["localhost"], ["127.0.0.1"], "--max-frame", "64KiB")
        settings = ConnectionSettings("127.0.0.1", daemon.port, daemon.token, 10,
                                      tls=True, ca=self.ca_path)
        client = yield AsyncClient.connect(reactor, settings)
        self.addCleanup(client.close)
        yield client.subscribe("hq_center")
        protocol = client.protocol
        protocol.transport.write(struct.pack("!I", 10_000_000))
        yield protocol.lost
        daemon.wait_for_log(r"sent a frame of 10000000 bytes, over the limit")

    test_daemon_closes_a_tls_subscriber_on_a_fatal_error.timeout = 8  # type: ignore[attr-defined]

    def test_reconnection_uses_tls(self) -> None:
        """After a daemon restart the client reconnects over TLS (verifying the
        certificate again) and resubscribes."""
        key, cert = self.ca.issue(self.folder, "server", ["localhost"], ["127.0.0.1"])
        first = Daemon(self, listen=[ssl_endpoint(key, cert)])
        subscriber = first.connect(tls=True, ca=self.ca_path)
        subscriber.subscribe("hq_center")
        port = first.port
        first.stop()
        listen = ssl_endpoint(key, cert).replace("ssl:0:", f"ssl:{port}:")
        second = Daemon(self, listen=[listen])
        self.assertEqual(subscriber.ping(), "pong")  # waits for the reconnection
        second.wait_for_log("subscribed to hq_center")
        second.connect(tls=True, ca=self.ca_path).push("600000.SH", 10.23, "hq_center")
        self.assertEqual(subscriber.Q.get(timeout=10),
                         lttx.Message("hq_center", "600000.SH", 10.23, 1))

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

        factory: Any = ServerFactory.forProtocol(Silent)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        address: Any = port.getHost()
        settings = ConnectionSettings("127.0.0.1", address.port, "t", 5,
                                      tls=True, ca=self.ca_path)
        connecting = AsyncClient.connect(reactor, settings)
        hello.addCallback(lambda _: connecting.cancel())
        # The client reports a cancelled connect as a ConnectError.
        failed = self.assertFailure(connecting, lttx.ConnectError)
        return failed.addCallback(lambda _: lost)

    test_cancelled_handshake_closes_the_connection.timeout = 30  # type: ignore[attr-defined]


class PrivateReactorTLSTests(SynchronousTestCase):
    """TLS under the blocking client, whose reactor is not the global one."""

    def test_pull_producer_streams_over_tls(self) -> None:
        """A FileSender (a pull producer, as file uploads use) streams through the
        client's TLS layer on a private reactor, with the global reactor stopped."""
        folder = self.mktemp()
        os.makedirs(folder)
        ca = CA.create("ca")
        key, cert = ca.issue(folder, "server", ["localhost"], ["127.0.0.1"])
        size = 3 * 1024 * 1024
        received = threading.Event()

        class Sink(Protocol):
            count = 0

            def dataReceived(self, data: bytes) -> None:
                Sink.count += len(data)
                if Sink.count >= size:
                    received.set()

        server_loop = EventLoop(name="test-server")
        self.addCleanup(server_loop.stop)
        server_options = PrivateCertificate.loadPEM(
            open(key, "rb").read() + open(cert, "rb").read()).options()
        server_factory = TLSMemoryBIOFactory(server_options, False, Factory.forProtocol(Sink),
                                             clock=server_loop.reactor)
        port = server_loop.run(server_loop.reactor.listenTCP, 0, server_factory,
                               50, "127.0.0.1", timeout=10)
        self.addCleanup(server_loop.run, port.stopListening, timeout=10)

        client_loop = EventLoop(name="test-client")
        self.addCleanup(client_loop.stop)
        settings = ConnectionSettings("127.0.0.1", port.getHost().port, tls=True,
                                      ca=ca.write(folder))

        def send() -> "Deferred[object]":
            connecting = connectProtocol(settings.endpoint(client_loop.reactor), Protocol())
            return connecting.addCallback(lambda protocol: FileSender().beginFileTransfer(
                io.BytesIO(b"x" * size), protocol.transport))

        client_loop.run(send, timeout=30)  # type: ignore[arg-type]
        self.assertTrue(received.wait(30), f"{Sink.count} of {size} bytes arrived")
        self.assertEqual(Sink.count, size)
