"""
The daemon's command line (``twistd lttx --help``) and the service it builds.
"""

from __future__ import annotations

import gc
import os
import re
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage

from ._version import DEFAULT_PORT
from .diskio import pool_runner
from .errors import RecoveryError
from .server.expiry import ExpirySweeper
from .server.factory import LTtxFactory
from .server.files import FileService
from .server.budget import DEFAULT_MAX_BUFFERED
from .server.upload_bounds import (
    DEFAULT_DISK_RESERVE,
    DEFAULT_MAX_PARTIAL_BYTES,
    DEFAULT_MAX_PARTIALS,
    STALE_SWEEP_INTERVAL,
    UploadBounds,
)
from .server.state import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_HOST,
    DEFAULT_MAX_FRAME,
    DEFAULT_SUBSCRIBER_BUFFER,
    ServerState,
)
from .state.auth import (
    Grant,
    RolesError,
    TokenAuthenticator,
    is_roles_file,
    parse_channel_passwords,
    parse_roles,
)
from .state.channels import DEFAULT_CHANNEL_HISTORY, DEFAULT_HISTORY_MEMORY, ChannelRegistry
from .storage.durable import FSYNC_POLICIES, DurableStore

ENGINES = ("memory", "redis")

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """``"64MiB"``, ``"16m"``, ``"1000"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise usage.UsageError(f"not a size: {text!r} (write e.g. 1048576, 512KiB or 64MiB)")
    return int(match.group(1)) * _UNITS[unit]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "LTtx: cloud variables, channels and files for distributed Python programs. "
        "Clients authenticate with a shared token, or one of several tokens with "
        "rights (a roles file, --token-file); without one the daemon serves "
        "loopback clients only (protected mode)."
    )

    optParameters = [
        ["port", "p", DEFAULT_PORT, "Listen on this TCP port, on all interfaces.", int],
        ["token", "t", None, "The shared secret clients must present (or env LTTX_TOKEN)."],
        ["token-file", None, None,
         "Read the token from this file (its first line), or, if the file holds a JSON "
         "object, several tokens with their rights (a roles file, see README.md): "
         '{"tokens": [{"name": "feed", "token": "...", "rights": ["publish:hq_*", '
         '"read"]}]}. Actions: read, write (variables), publish, subscribe (channels), '
         "upload, download (files), monitor (the status report, the HTTP page and "
         "metrics), all; ACTION:GLOB limits one to matching names."],
        ["data-dir", "d", "./lttx-data", "Where variables, the journal and files live."],
        ["fsync", None, "everysec",
         "Durability of variable writes: always (each write on disk before its reply), "
         "everysec (fsync once a second) or no (the OS flushes)."],
        ["max-frame", None, str(DEFAULT_MAX_FRAME),
         "Largest accepted frame, in bytes (suffixes KiB, MiB, GiB accepted)."],
        ["max-connections", None, DEFAULT_MAX_CONNECTIONS,
         "Open connections at most; past it a new one gets a limit error and is "
         "closed (0: no bound).", int],
        ["max-connections-per-host", None, DEFAULT_MAX_CONNECTIONS_PER_HOST,
         "Open connections from one host (IP address) at most (0: no bound).", int],
        ["max-file-size", None, "0",
         "Largest accepted upload, in bytes (suffixes KiB, MiB, GiB accepted); 0 for no limit."],
        ["max-buffered", None, str(DEFAULT_MAX_BUFFERED),
         "Bytes all connections may hold together: replies not yet read, frames not yet "
         "complete (suffixes KiB, MiB, GiB accepted); past it large frames and replies "
         "get a limit error; 0 for no bound."],
        ["disk-reserve", None, str(DEFAULT_DISK_RESERVE),
         "Bytes of free disk uploads must leave for the journal (suffixes KiB, MiB, GiB "
         "accepted); 0 for none."],
        ["max-partials", None, DEFAULT_MAX_PARTIALS,
         "Interrupted (partial) uploads one token (under a roles file) or host may hold; "
         "0 for no bound.", int],
        ["max-partial-bytes", None, str(DEFAULT_MAX_PARTIAL_BYTES),
         "The declared bytes of those partial uploads together; 0 for no bound."],
        ["engine", None, "memory",
         "Where variables live: memory (this daemon, with its journal in --data-dir) or "
         "redis (in Redis, shared by every daemon on it; channels span them too)."],
        ["redis", None, "redis://127.0.0.1:6379/0",
         "The Redis of --engine redis: redis://[:password@]host[:port][/db]."],
        ["redis-sentinel", None, None,
         "Find the Redis master through these sentinels instead: HOST:PORT,HOST:PORT,..."],
        ["redis-master", None, None, "The master name the sentinels know (with --redis-sentinel)."],
        ["redis-password-file", None, None,
         "Read the Redis password from this file (its first line); else env LTTX_REDIS_PASSWORD."],
        ["redis-prefix", None, "lttx:",
         "The prefix of every Redis key and channel this daemon uses."],
        ["redis-wait", None, 0,
         "With --engine redis: every variable write and acknowledged publish is answered "
         "only once this many Redis replicas have it (Redis WAIT); else the client gets "
         "Unavailable. 0: off (replication is asynchronous).", int],
        ["redis-wait-timeout", None, 1.0,
         "Seconds a write waits for its --redis-wait replicas before it is answered "
         "Unavailable.", float],
        ["subscriber-buffer", None, str(DEFAULT_SUBSCRIBER_BUFFER),
         "Obsolete, accepted and ignored: a subscriber is a position in the channel's "
         "log, with no queue of its own to bound (see --channel-history)."],
        ["channel-history", None, str(DEFAULT_CHANNEL_HISTORY),
         "Bytes of recent messages each channel retains for its subscribers "
         "(suffixes KiB, MiB, GiB accepted)."],
        ["history-memory", None, str(DEFAULT_HISTORY_MEMORY),
         "Bytes of messages all channels retain together; past it the oldest messages "
         "of the largest channels go first."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["legacy-listen"] = []
        self["http"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        A Twisted server endpoint string to listen on, e.g.
        tcp:2025:interface=127.0.0.1 or systemd:domain=INET:index=0; repeatable,
        replaces --port.
        """
        self["listen"].append(endpoint)

    def opt_legacy_listen(self, endpoint: str) -> None:
        """
        Also serve the original LTtx protocol (unmodified tx.py clients) on this
        Twisted endpoint, e.g. tcp:2049; repeatable.  It has no TLS: for trusted
        networks; the token, roles and protected mode apply as on --listen.
        """
        self["legacy-listen"].append(endpoint)

    def opt_http(self, endpoint: str) -> None:
        """
        Serve the status page, /status.json, /metrics and /healthz over HTTP on
        this Twisted endpoint, e.g. tcp:8025:interface=127.0.0.1 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem; repeatable; off by default
        (docs/http.md).
        """
        self["http"].append(endpoint)

    def opt_fsync(self, policy: str) -> None:
        """Durability of variable writes: always, everysec or no."""
        if policy not in FSYNC_POLICIES:
            raise usage.UsageError(f"--fsync must be one of {', '.join(FSYNC_POLICIES)}")
        self["fsync"] = policy

    def postOptions(self) -> None:
        for name in ("max-frame", "subscriber-buffer", "channel-history", "history-memory"):
            if isinstance(self[name], str):
                self[name] = parse_size(self[name])
            if self[name] < 1024:
                raise usage.UsageError(f"--{name} must be at least 1024 bytes")
        if self["max-frame"] >= 2**31:
            # The length prefix is 32 bits, and clients read frames below 2 GiB.
            raise usage.UsageError("--max-frame must be under 2GiB")
        if isinstance(self["max-file-size"], str):
            self["max-file-size"] = parse_size(self["max-file-size"])
        if self["token"] and self["token-file"]:
            raise usage.UsageError("give --token or --token-file, not both")
        self["roles"] = read_roles(self["token-file"]) if self["token-file"] else None
        self["channel-passwords"] = (read_channel_passwords(self["token-file"])
                                     if self["roles"] is not None else [])
        if self["engine"] not in ENGINES:
            raise usage.UsageError(f"--engine must be one of {', '.join(ENGINES)}")
        if bool(self["redis-sentinel"]) != bool(self["redis-master"]):
            raise usage.UsageError("give --redis-sentinel and --redis-master together")
        if self["engine"] == "redis":
            from .engines.redis.engine import redis_address

            redis_address(self, dict(os.environ))  # raises UsageError for a bad one
        if self["redis-wait"] < 0 or self["redis-wait-timeout"] <= 0:
            raise usage.UsageError("--redis-wait must be 0 or more and --redis-wait-timeout "
                                   "above 0")
        for bound in ("max-connections", "max-connections-per-host"):
            if self[bound] < 0:
                raise usage.UsageError(f"--{bound} must be 0 (no bound) or more")
        if not 0 <= self["port"] < 65536:
            raise usage.UsageError("--port must be between 0 and 65535")
        self._upload_bounds()

    def _upload_bounds(self) -> None:
        """--disk-reserve, --max-partials, --max-partial-bytes (issue 19)."""
        for name in ("disk-reserve", "max-partial-bytes", "max-buffered"):
            if isinstance(self[name], str):
                self[name] = parse_size(self[name])
        for name in ("disk-reserve", "max-partials", "max-partial-bytes", "max-buffered"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must be 0 (no bound) or more")


def read_roles(path: str) -> Optional[list[tuple[str, Grant]]]:
    """
    The tokens and grants of a roles file, or None if ``path`` is a plain
    token file (see :func:`lttx.auth.is_roles_file`).

    :raises usage.UsageError: if the file cannot be read or is a broken roles file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise usage.UsageError(f"cannot read --token-file: {e}") from None
    if not is_roles_file(text):
        return None
    try:
        return parse_roles(text, f"--token-file {path}")
    except RolesError as e:
        raise usage.UsageError(str(e)) from None


def read_channel_passwords(path: str) -> list[tuple[str, str]]:
    """The channel passwords a roles file fixes (its ``"channels"``).

    :raises usage.UsageError: if that part of the file is broken.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return parse_channel_passwords(text, f"--token-file {path}")
    except RolesError as e:
        raise usage.UsageError(str(e)) from None


def make_authenticator(options: Options, environ: dict[str, str]) -> TokenAuthenticator:
    """The authenticator of a roles file, or of the single token (which may do everything)."""
    if "roles" in options:
        roles = options["roles"]
    else:  # options filled in by hand, not parsed
        roles = read_roles(options["token-file"]) if options.get("token-file") else None
    if roles is not None:
        return TokenAuthenticator.from_roles(roles)
    return TokenAuthenticator(read_token(options, environ))


def read_token(options: Options, environ: dict[str, str]) -> Optional[str]:
    """The token from --token, --token-file or LTTX_TOKEN, in that order."""
    if options["token"]:
        return str(options["token"])
    if options["token-file"]:
        try:
            with open(options["token-file"], encoding="utf-8") as f:
                token = f.readline().strip()
        except OSError as e:
            raise usage.UsageError(f"cannot read --token-file: {e}") from None
        if not token:
            raise usage.UsageError(f"--token-file {options['token-file']} is empty")
        return token
    return environ.get("LTTX_TOKEN") or None


class _LoggingEndpointService(StreamServerEndpointService):
    """Listens like its parent, and says where, so a port of 0 can be found."""

    log = Logger()

    def __init__(self, description: str, *args: Any, what: str = "LTtx") -> None:
        super().__init__(*args)
        self.description = description
        #: Who listens, for the log line ("LTtx", or the legacy protocol).
        self.what = what

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.log.info("{what} listening on {description} at {address}", what=self.what,
                      description=self.description, address=_address(port))
        if self.what != "LTtx":
            return port
        # The Redis engine tells the other daemons where this one listens.
        listening = getattr(self.factory.state.store, "listening", None)
        if isinstance(listening, list):
            listening.append(_address(port))
        return port


def _address(port: Any) -> str:
    host = port.getHost()
    return f"{host.host}:{host.port}" if hasattr(host, "port") else str(host)


def makeService(options: Options, reactor: Optional[IReactorCore] = None) -> IService:
    """Build the daemon: store, factory and one listening service per endpoint."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor  # type: ignore[assignment]
    log = Logger(namespace="lttx.tap")
    auth = make_authenticator(options, dict(os.environ))
    if auth.protected_mode:
        log.warn("no token given: protected mode, serving loopback clients only")
    elif options.get("roles") is not None:
        log.info("{count} tokens with roles from {path}",
                 count=auth.token_count, path=options["token-file"])

    top = MultiService()
    channels: ChannelRegistry
    store: Any
    # What `lttx status` reports besides the factory's own figures, the
    # channels and the files: one entry per component with a status().
    status_sources: dict[str, Any]
    if options.get("engine", "memory") == "redis":
        from .engines.redis.channels import SharedChannelRegistry
        from .engines.redis.engine import make_redis_engine, new_daemon_id

        os.makedirs(options["data-dir"], exist_ok=True)  # files still live here
        channels = SharedChannelRegistry(
            reactor.seconds, options.get("redis-prefix") or "lttx:",  # type: ignore[attr-defined]
            new_daemon_id(), **_history_options(options))
        store = make_redis_engine(options, dict(os.environ), reactor, channels, top)
        status_sources = {"engine": store}
    else:
        try:
            os.makedirs(options["data-dir"], exist_ok=True)
            store = DurableStore.open(
                os.path.join(options["data-dir"], "variables"), options["fsync"], reactor)
        except (OSError, RecoveryError) as e:
            raise SystemExit(f"lttx: refusing to start: {e}") from None
        # The variables just loaded are long-lived and acyclic (refcounting frees
        # them): keep full GC collections from re-scanning them, which paused the
        # reactor ~150 ms per million variables in benchmarks/durability.py.
        gc.freeze()
        # First under the MultiService: it runs before any listener accepts a
        # write; its stopService flushes and fsyncs the journal at SIGTERM.
        store.setServiceParent(top)
        channels = ChannelRegistry(clock=reactor.seconds,  # type: ignore[attr-defined]
                                   **_history_options(options))
        status_sources = {"journal": store}
    channels.fixed_passwords = options.get("channel-passwords") or ()
    legacy = _legacy_status(options, status_sources)
    files = FileService(os.path.join(options["data-dir"], "files"), pool_runner(reactor),
                        max_file_size=options["max-file-size"],
                        clock=reactor,  # type: ignore[arg-type]
                        bounds=UploadBounds(
                            options.get("disk-reserve", DEFAULT_DISK_RESERVE),
                            options.get("max-partials", DEFAULT_MAX_PARTIALS),
                            options.get("max-partial-bytes", DEFAULT_MAX_PARTIAL_BYTES)),
                        per_token=options.get("roles") is not None)
    state = ServerState(store, auth, max_frame=options["max-frame"], channels=channels,
                        subscriber_buffer=options["subscriber-buffer"],
                        clock=reactor, files=files,  # type: ignore[arg-type]
                        status_sources=status_sources)
    state.max_connections = options.get("max-connections", DEFAULT_MAX_CONNECTIONS)
    state.budget.limit = options.get("max-buffered", DEFAULT_MAX_BUFFERED)
    state.max_connections_per_host = options.get("max-connections-per-host",
                                                 DEFAULT_MAX_CONNECTIONS_PER_HOST)
    factory = LTtxFactory(state)

    rates = TimerService(1.0, channels.sample)
    rates.clock = reactor
    rates.setServiceParent(top)
    sweeper = ExpirySweeper(store, reactor, after=channels.flush)  # type: ignore[arg-type]
    sweep = TimerService(1.0, sweeper.run)
    sweep.clock = reactor
    sweep.setServiceParent(top)
    files.setServiceParent(top)
    _shared_files(options, store, files, state, auth, reactor, top)
    stale = TimerService(STALE_SWEEP_INTERVAL, files.sweep_stale)  # abandoned partials
    stale.clock = reactor
    stale.setServiceParent(top)
    endpoints = options["listen"] or [f"tcp:{options['port']}"]
    for description in endpoints:
        endpoint = serverFromString(reactor, description)
        service = _LoggingEndpointService(description, endpoint, factory)
        service.setServiceParent(top)
    _legacy_listeners(options, reactor, state, legacy, top)
    if options.get("http"):
        from .web.service import make_http_service

        make_http_service(state, options["http"], reactor).setServiceParent(top)
    return top


def _shared_files(options: Options, store: Any, files: FileService, state: ServerState,
                  auth: Any, reactor: Any, top: MultiService) -> None:
    """On --engine redis: files listed, downloaded and deleted through any daemon."""
    if options.get("engine", "memory") != "redis":
        return
    from .server.shared_files import DAEMON_GRANT, SharedFiles, folder_id

    try:
        holder = folder_id(files.directory)
    except (OSError, ValueError) as e:
        raise SystemExit(f"lttx: refusing to start: {e}") from None
    # The Redis file directory names this daemon's files by its folder's id.
    store.files.holder_id = store.directory.files_id = holder
    shared = SharedFiles(files, store.files, store.directory, reactor)
    state.file_sessions = shared.session  # type: ignore[method-assign,assignment]
    auth.add_daemon_token(store.directory.files_token, DAEMON_GRANT)
    shared.setServiceParent(top)


def _legacy_status(options: Options, status_sources: dict[str, Any]) -> Any:
    """The legacy port's figures, a status source, if --legacy-listen is given."""
    if not options.get("legacy-listen"):
        return None
    from .server.legacy import LegacyStatus

    status_sources["legacy"] = legacy = LegacyStatus()
    return legacy


def _legacy_listeners(options: Options, reactor: Any, state: ServerState, legacy: Any,
                      top: MultiService) -> None:
    """One listening service per --legacy-listen endpoint (the original protocol)."""
    if legacy is None:
        return
    from .server.legacy import LegacyFactory

    factory = LegacyFactory(state, legacy)
    for description in options["legacy-listen"]:
        service = _LoggingEndpointService(description, serverFromString(reactor, description),
                                          factory, what="LTtx legacy protocol")
        service.setServiceParent(top)


def _history_options(options: Any) -> dict[str, int]:
    """The channel registry's bounds from --channel-history and --history-memory."""
    return {"history_bytes": options.get("channel-history", DEFAULT_CHANNEL_HISTORY),
            "history_memory": options.get("history-memory", DEFAULT_HISTORY_MEMORY)}
