"""The daemon's options and the service makeService builds."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from lttx.tap import Options, makeService, parse_size, read_token

from .common import listeners


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """The defaults of SPEC section 1."""
        options = parse()
        self.assertEqual(
            (options["port"], options["listen"], options["token"], options["data-dir"],
             options["fsync"], options["max-frame"], options["subscriber-buffer"]),
            (2025, [], None, "./lttx-data", "everysec", 64 * 1024**2, 16 * 1024**2))

    def test_listen_is_repeatable(self) -> None:
        options = parse("--listen", "tcp:2025", "--listen", "tcp:2026:interface=127.0.0.1")
        self.assertEqual(options["listen"], ["tcp:2025", "tcp:2026:interface=127.0.0.1"])

    def test_sizes(self) -> None:
        options = parse("--max-frame", "1MiB", "--subscriber-buffer", "512k")
        self.assertEqual((options["max-frame"], options["subscriber-buffer"]),
                         (1024**2, 512 * 1024))
        self.assertEqual(parse_size("1000"), 1000)
        self.assertEqual(parse_size("2 GiB"), 2 * 1024**3)

    def test_bad_values(self) -> None:
        """Bad values are usage errors with a clear message."""
        for argv in (["--fsync", "sometimes"], ["--max-frame", "lots"], ["--max-frame", "10"],
                     ["--max-frame", "2GiB"], ["--port", "70000"], ["--port", "x"],
                     ["--token", "a", "--token-file", "f"]):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_upload_bounds(self) -> None:
        """--disk-reserve, --max-partials, --max-partial-bytes: defaults, sizes, no negatives."""
        options = parse()
        self.assertEqual((options["disk-reserve"], options["max-partials"],
                          options["max-partial-bytes"]), (1024**3, 32, 64 * 1024**3))
        options = parse("--disk-reserve", "2MiB", "--max-partials", "0",
                        "--max-partial-bytes", "1GiB")
        self.assertEqual((options["disk-reserve"], options["max-partials"],
                          options["max-partial-bytes"]), (2 * 1024**2, 0, 1024**3))
        self.assertEqual(parse()["max-buffered"], 512 * 1024**2)
        self.assertEqual(parse("--max-buffered", "1GiB")["max-buffered"], 1024**3)
        for argv in (["--disk-reserve", "-1"], ["--max-partials", "-2"],
                     ["--max-buffered", "-5"]):
            self.assertRaises(usage.UsageError, parse, *argv)

    def test_token_sources(self) -> None:
        """--token, then --token-file, then LTTX_TOKEN."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        self.assertEqual(read_token(parse("--token", "t"), {"LTTX_TOKEN": "env"}), "t")
        self.assertEqual(read_token(parse("--token-file", path), {"LTTX_TOKEN": "env"}),
                         "from-file")
        self.assertEqual(read_token(parse(), {"LTTX_TOKEN": "env"}), "env")
        self.assertIsNone(read_token(parse(), {}))
        # A missing file is refused when the options are parsed (twistd prints
        # a usage error, not a traceback from makeService).
        self.assertRaises(usage.UsageError, parse, "--token-file", path + "x")


def start_listeners(test: SynchronousTestCase, service: object) -> None:
    # Only the listeners: the durable store's I/O threads need a real reactor,
    # and its service is tested on one in tests.test_durable.
    for listener in listeners(service):
        listener.privilegedStartService()
        listener.startService()
        test.addCleanup(listener.stopService)


class MakeServiceTests(SynchronousTestCase):
    def test_one_listener_per_endpoint(self) -> None:
        """Each --listen becomes a listening port on the given reactor."""
        reactor = MemoryReactorClock()
        options = parse("--listen", "tcp:2025:interface=127.0.0.1", "--listen", "tcp:2026",
                        "--token", "t", "--data-dir", self.mktemp())
        service = makeService(options, reactor)
        self.assertEqual(len(listeners(service)), 2)
        start_listeners(self, service)
        self.assertEqual(sorted((port, interface) for port, _, _, interface in reactor.tcpServers),
                         [(2025, "127.0.0.1"), (2026, "")])

    def test_history_bounds_reach_the_registry(self) -> None:
        """--channel-history and --history-memory are the channel registry's bounds;
        the obsolete --subscriber-buffer is still accepted (old unit files)."""
        self.assertEqual((parse()["channel-history"], parse()["history-memory"]),
                         (64 * 1024**2, 1024**3))
        options = parse("--channel-history", "2MiB", "--history-memory", "100MiB",
                        "--subscriber-buffer", "2MiB", "--data-dir", self.mktemp())
        service = makeService(options, MemoryReactorClock())
        [listener] = listeners(service)
        status = listener.factory.state.channels.status()
        self.assertEqual((status["channel_history"], status["history_memory"], status["channels"]),
                         (2 * 1024**2, 100 * 1024**2, {}))

    def test_bounds_reach_the_daemon(self) -> None:
        """--max-buffered, --disk-reserve, --max-partials, --max-partial-bytes reach
        the state and the file service (partials per host: no roles file)."""
        options = parse("--max-buffered", "8MiB", "--disk-reserve", "3MiB", "--max-partials",
                        "4", "--max-partial-bytes", "5MiB", "--data-dir", self.mktemp())
        [listener] = listeners(makeService(options, MemoryReactorClock()))
        state = listener.factory.state
        bounds = state.files.bounds
        self.assertEqual((state.budget.limit, bounds.reserve, bounds.max_partials,
                          bounds.max_partial_bytes, state.files.per_token),
                         (8 * 1024**2, 3 * 1024**2, 4, 5 * 1024**2, False))

    def test_port_when_no_listen(self) -> None:
        reactor = MemoryReactorClock()
        service = makeService(parse("--port", "3000", "--data-dir", self.mktemp()), reactor)
        start_listeners(self, service)
        self.assertEqual([port for port, *_ in reactor.tcpServers], [3000])


class LegacyListenTests(SynchronousTestCase):
    def test_legacy_listeners_share_the_state(self) -> None:
        """Each --legacy-listen is a listener of the old protocol on the native port's
        state; its figures are a status source."""
        from lttx.server.legacy import LegacyFactory

        reactor = MemoryReactorClock()
        options = parse("--listen", "tcp:2026", "--legacy-listen", "tcp:2025",
                        "--legacy-listen", "tcp:2049:interface=127.0.0.1", "--token", "t",
                        "--data-dir", self.mktemp())
        self.assertEqual(options["legacy-listen"], ["tcp:2025", "tcp:2049:interface=127.0.0.1"])
        service = makeService(options, reactor)
        native, *legacy = listeners(service)
        self.assertEqual([type(s.factory) for s in legacy], [LegacyFactory, LegacyFactory])
        self.assertIs(legacy[0].factory.state, native.factory.state)
        self.assertIn("legacy", native.factory.state.status_sources)
        start_listeners(self, service)
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [2025, 2026, 2049])

    def test_off_by_default(self) -> None:
        service = makeService(parse("--data-dir", self.mktemp()), MemoryReactorClock())
        self.assertEqual(len(listeners(service)), 1)
        self.assertNotIn("legacy", listeners(service)[0].factory.state.status_sources)
