"""
The systemd units in ``contrib/systemd``: they parse, their command lines
are valid for ``twistd`` and the plugin, and the socket-activated one really
adopts a socket handed over the way systemd does it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase

from lttx import tap

from .certs import CA
from .common import PACKAGE_ROOT, TOKEN, TWISTD, Daemon, listeners

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
INSTALLED_TWISTD = "/opt/lttx/bin/twistd"
STATE_DIRECTORY = "/var/lib/lttx"


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """
    A unit file as ``{section: [(key, value), ...]}``, keys in order and
    repeated as systemd allows (``SystemCallFilter=`` twice), continuation
    lines joined.  Raises ``ValueError`` on a line systemd would not accept.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: Optional[list[tuple[str, str]]] = None
    pending = ""
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current.append((key.strip(), value.strip()))
        else:
            raise ValueError(f"{path.name}:{number}: not a section or key=value: {raw!r}")
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def exec_start(unit_path: Path, credentials: str) -> list[str]:
    """The ExecStart argv with systemd's specifiers (%d, %%) expanded.  An
    empty ``ExecStart=`` (in a drop-in) clears the commands before it."""
    commands = values(read_unit(unit_path), "Service", "ExecStart")
    if "" in commands:
        commands = commands[len(commands) - commands[::-1].index(""):]
    [line] = commands
    argv = shlex.split(line)
    return [a.replace("%d", credentials).replace("%%", "%") for a in argv]


def lttx_args(argv: list[str]) -> list[str]:
    """The arguments after the ``lttx`` subcommand of a twistd command line."""
    return argv[argv.index("lttx") + 1:]


def write_credentials(folder: str, content: str) -> str:
    """A credentials directory like systemd's %d, holding ``tokens``."""
    os.makedirs(folder)
    with open(os.path.join(folder, "tokens"), "w", encoding="utf-8") as f:
        f.write(content)
    return folder


class UnitFileTests(TestCase):
    """The unit files parse and say what the README promises."""

    SERVICES = ("lttx.service", "lttx-activated.service")

    def test_units_exist_and_parse(self) -> None:
        """Each unit has its sections; the socket feeds the activated service."""
        for name in self.SERVICES:
            unit = read_unit(UNITS / name)
            self.assertEqual(values(unit, "Service", "DynamicUser"), ["yes"], name)
            self.assertEqual(values(unit, "Service", "StateDirectory"), ["lttx"], name)
            self.assertEqual(values(unit, "Service", "Restart"), ["on-failure"], name)
            self.assertEqual(values(unit, "Service", "NoNewPrivileges"), ["yes"], name)
            self.assertEqual(values(unit, "Service", "ProtectSystem"), ["strict"], name)
            self.assertEqual(values(unit, "Service", "LoadCredential"),
                             ["tokens:/etc/lttx/tokens"], name)
        socket_unit = read_unit(UNITS / "lttx.socket")
        self.assertEqual(values(socket_unit, "Socket", "Service"), ["lttx-activated.service"])
        # An IPv4 socket, as the service's systemd:domain=INET endpoint expects.
        self.assertEqual(values(socket_unit, "Socket", "ListenStream"), ["0.0.0.0:2025"])
        self.assertEqual(values(socket_unit, "Install", "WantedBy"), ["sockets.target"])
        activated = read_unit(UNITS / "lttx-activated.service")
        self.assertEqual(values(activated, "Unit", "Requires"), ["lttx.socket"])
        self.assertEqual(values(read_unit(UNITS / "lttx.service"), "Install", "WantedBy"),
                         ["multi-user.target"])

    def test_exec_start_is_a_valid_twistd_command_line(self) -> None:
        """twistd's own parser and the plugin's Options accept each ExecStart."""
        from twisted.scripts.twistd import ServerOptions

        credentials = write_credentials(self.mktemp(), TOKEN + "\n")
        expected_listen = {"lttx.service": ["tcp:2025"],
                           "lttx-activated.service": ["systemd:domain=INET:index=0"]}
        for name in self.SERVICES:
            argv = exec_start(UNITS / name, credentials)
            self.assertEqual(argv[0], INSTALLED_TWISTD)
            server = ServerOptions()
            server.parseOptions(argv[1:])
            self.assertTrue(server["nodaemon"], name)
            self.assertEqual(server["pidfile"], "", name)
            self.assertEqual(server.subCommand, "lttx", name)

            options = tap.Options()
            options.parseOptions(lttx_args(argv))
            self.assertEqual(options["listen"], expected_listen[name])
            self.assertEqual(options["data-dir"], STATE_DIRECTORY)
            self.assertEqual(options["token-file"], os.path.join(credentials, "tokens"))
            self.assertEqual(tap.read_token(options, {}), TOKEN)

    def test_plain_service_builds(self) -> None:
        """makeService accepts the plain service's options (its endpoint string parses)."""
        credentials = write_credentials(self.mktemp(), TOKEN + "\n")
        options = tap.Options()
        options.parseOptions(lttx_args(exec_start(UNITS / "lttx.service", credentials)))
        options["data-dir"] = self.mktemp()  # makeService opens the journal there
        service = tap.makeService(options, MemoryReactorClock())
        self.assertEqual(len(listeners(service)), 1)

    def test_tls_drop_in(self) -> None:
        """The TLS drop-in replaces ExecStart with an ssl: endpoint whose files load."""
        unit = read_unit(UNITS / "lttx.service.d" / "tls.conf")
        self.assertEqual(values(unit, "Service", "LoadCredential"),
                         ["key.pem:/etc/lttx/key.pem", "cert.pem:/etc/lttx/cert.pem"])
        credentials = write_credentials(self.mktemp(), TOKEN + "\n")
        ca = CA.create("ca")
        key, cert = ca.issue(credentials, "server", ["localhost"], [])
        os.rename(key, os.path.join(credentials, "key.pem"))
        os.rename(cert, os.path.join(credentials, "cert.pem"))
        argv = exec_start(UNITS / "lttx.service.d" / "tls.conf", credentials)
        self.assertEqual(argv[:4], [INSTALLED_TWISTD, "-n", "--pidfile=", "lttx"])
        options = tap.Options()
        options.parseOptions(lttx_args(argv))
        self.assertEqual(options["listen"], [
            f"ssl:2025:privateKey={credentials}/key.pem:certKey={credentials}/cert.pem"])
        # makeService parses the endpoint string, which loads the key and certificate.
        options["data-dir"] = self.mktemp()  # makeService opens the journal there
        service = tap.makeService(options, MemoryReactorClock())
        self.assertEqual(len(listeners(service)), 1)

    def test_bad_exec_start_would_be_caught(self) -> None:
        """The check above is real: an unknown option is refused by the parser."""
        self.assertRaises(usage.UsageError, tap.Options().parseOptions,
                          ["--listen", "tcp:2025", "--no-such-option"])

    def test_systemd_analyze_verify(self) -> None:
        """systemd-analyze verify accepts the units without a single warning."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (apt-get install systemd)")
        twistd = shutil.which("twistd")
        if twistd is None:
            raise SkipTest("no twistd executable on PATH to stand in for " + INSTALLED_TWISTD)
        folder = self.mktemp()
        os.makedirs(folder)
        # verify checks that ExecStart's program exists: point it at this
        # machine's twistd instead of the documented /opt/lttx venv.
        for path in UNITS.glob("**/*"):
            if path.is_file():
                target = Path(folder, path.relative_to(UNITS))
                target.parent.mkdir(parents=True, exist_ok=True)
                text = path.read_text(encoding="utf-8").replace(INSTALLED_TWISTD, twistd)
                target.write_text(text, encoding="utf-8")
        units = [os.path.join(folder, name)
                 for name in ("lttx.service", "lttx.socket", "lttx-activated.service")]
        # The folder first on the unit path, so the drop-in lttx.service.d/ is read too.
        env = dict(os.environ, SYSTEMD_UNIT_PATH=folder + ":")
        result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True,
                                timeout=120, env=env)
        if result.returncode != 0 and "Failed to initialize manager" in result.stderr:
            raise SkipTest(f"systemd-analyze cannot run here: {result.stderr.strip()}")
        self.assertEqual((result.returncode, result.stderr), (0, ""))


class SocketActivatedDaemon(Daemon):
    """
    The real daemon run by lttx-activated.service's ExecStart, given a
    listening socket as systemd gives it: file descriptor 3, with
    ``LISTEN_FDS=1``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` set to the
    daemon's own pid.
    """

    def __init__(self, testcase: TestCase, listener: socket.socket,
                 credentials: str) -> None:
        self.listener = listener
        self.pass_fds = (listener.fileno(),)
        self.credentials = credentials
        super().__init__(testcase, token=TOKEN)

    def command(self) -> list[str]:
        argv = exec_start(UNITS / "lttx-activated.service", self.credentials)
        argv = TWISTD + [self.data_dir if a == STATE_DIRECTORY else a for a in argv[1:]]
        return [sys.executable, "-c", _ACTIVATE, str(self.listener.fileno()), *argv]


# What systemd does between fork and exec: the socket becomes fd 3 and the
# environment names the process that owns it (exec keeps the pid).
_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
# systemd >= 227 always names the sockets; Twisted requires the names.
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="lttx.socket", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


class SocketActivationTests(TestCase):
    """The socket-activated unit's command line adopts an inherited socket."""

    def test_daemon_serves_on_the_inherited_socket(self) -> None:
        """The daemon listens on the socket it was handed and serves a client there."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        credentials = write_credentials(self.mktemp(), TOKEN + "\n")
        daemon = SocketActivatedDaemon(self, listener, credentials)
        self.assertEqual(daemon.port, port)
        self.assertIn("LTtx listening on systemd:domain=INET:index=0 at 127.0.0.1:",
                      daemon.log_text())
        # The test's own copy is closed: only the daemon holds the socket now.
        listener.close()
        client = daemon.connect()
        client.put("started-by", "systemd")
        self.assertEqual(client.get("started-by"), "systemd")
        # twistd ends by re-raising SIGTERM on itself; systemd counts a
        # SIGTERM death as a clean exit, so Restart=on-failure leaves it be.
        self.assertEqual(daemon.stop(), -signal.SIGTERM)
        self.assertIn("Server Shut Down.", daemon.log_text())


# The package the daemon imports must be the one under test.
assert os.path.isdir(os.path.join(PACKAGE_ROOT, "lttx"))
