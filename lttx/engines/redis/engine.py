"""
The Redis engine assembled: :func:`make_redis_engine` builds the Redis
clients, the store, the channel bridge's connections and the daemon directory
under the daemon's services, from the ``--redis*`` options.

- Variables: :class:`lttx.engines.redis.store.RedisStore`.
- Channels: :class:`lttx.engines.redis.channels.SharedChannelRegistry`, its
  streams read by :class:`lttx.engines.redis.follower.StreamFollower` on a
  connection of its own (``redis streams`` in the log).
- Daemons: :class:`lttx.engines.redis.directory.DaemonDirectory`.
- Watches and mirrors: :class:`lttx.engines.redis.changes.ChangeFeed` (the
  change stream into the daemon's change log, on a connection of its own).
- ``--redis-wait``: :class:`lttx.engines.redis.replication.Replication`.
- Files: :class:`lttx.engines.redis.filedir.FileDirectory` (who holds which
  file; the daemon's side is :mod:`lttx.server.shared_files`), and the
  replicas' lag (:class:`lttx.engines.redis.replicas.ReplicationView`).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any, Optional

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from ...state.channels import ChannelRegistry
from .changes import ChangeFeed
from .channels import SharedChannelRegistry
from .directory import DaemonDirectory
from .filedir import SCRIPTS as FILE_SCRIPTS
from .filedir import FileDirectory
from .follower import StreamFollower
from .replicas import ReplicationView
from .replication import DEFAULT_WAIT_TIMEOUT, Replication
from .resp import RedisAddress, RedisClient
from .store import FEED_START, SCRIPTS, RedisStore, changes_maxlen
from .streams import SCRIPTS as STREAM_SCRIPTS


def redis_address(options: Any, environ: dict[str, str]) -> RedisAddress:
    """The Redis of the options: --redis URL, or --redis-sentinel and --redis-master."""
    password = None
    if options.get("redis-password-file"):
        try:
            with open(options["redis-password-file"], encoding="utf-8") as f:
                password = f.readline().strip() or None
        except OSError as e:
            raise usage.UsageError(f"cannot read --redis-password-file: {e}") from None
    else:
        password = environ.get("LTTX_REDIS_PASSWORD") or None
    try:
        address = RedisAddress.from_url(options.get("redis") or "redis://127.0.0.1:6379/0",
                                        password)
    except ValueError as e:
        raise usage.UsageError(f"--redis: {e}") from None
    if options.get("redis-sentinel"):
        sentinels = []
        for item in options["redis-sentinel"].split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise usage.UsageError(f"--redis-sentinel: not HOST:PORT: {item!r}")
            sentinels.append((host, int(port)))
        address.sentinels = sentinels
        address.master_name = options["redis-master"]
    return address


class _EngineStore(RedisStore):
    """The store with the engine's status (Redis, role, known daemons)."""

    directory: Optional[DaemonDirectory] = None
    #: Which daemon holds each file (made by make_redis_engine).
    files: Optional[FileDirectory] = None
    #: The replicas' lag (INFO replication), for status.
    replicas: Optional[ReplicationView] = None

    def __init__(self, client: RedisClient, prefix: str = "lttx:", clock: Any = None,
                 **options: Any) -> None:
        super().__init__(client, prefix, *(() if clock is None else (clock,)), **options)
        #: host:port of each listener (the tap adds them once listening)
        self.listening: list[str] = []

    def status(self) -> dict[str, Any]:
        status = super().status()
        if self.directory is not None:
            status.update(self.directory.status())
        if self.files is not None:
            status["files"] = self.files.status()
        if self.replicas is not None:
            status["replication"] = self.replicas.status()
        return status


def make_redis_engine(options: Any, environ: dict[str, str], reactor: Any,
                      channels: ChannelRegistry, parent: MultiService) -> RedisStore:
    """
    Build the Redis clients, the store and the directory under ``parent``;
    join ``channels`` (a :class:`SharedChannelRegistry`) to Redis.
    """
    address = redis_address(options, environ)
    prefix = options.get("redis-prefix") or "lttx:"
    commands = RedisClient(reactor, address, name="redis",
                           scripts=[*SCRIPTS, *STREAM_SCRIPTS, *FILE_SCRIPTS])
    history = options.get("channel-history") or 64 * 1024 * 1024
    store = _EngineStore(commands, prefix, reactor.seconds, maxlen=changes_maxlen(history))
    services = MultiService()
    services.setServiceParent(parent)
    _ClientRunner(commands).setServiceParent(services)
    _changes(reactor, address, channels, store).setServiceParent(services)
    if options.get("redis-wait"):
        store.replication = Replication(
            commands, options["redis-wait"],
            options.get("redis-wait-timeout") or DEFAULT_WAIT_TIMEOUT, reactor)
    if isinstance(channels, SharedChannelRegistry):
        # The channel streams' XREAD loop, on a connection of its own.
        reading = RedisClient(reactor, address, name="redis streams", scripts=STREAM_SCRIPTS)
        follower = StreamFollower(reading, commands, channels.stream_key, channels.entries_read,
                                  channels.flush, channels.resync, reactor.callLater)
        reading.on_ready = follower.ready
        channels.attach(commands, follower)
        if store.replication is not None:
            # --redis-wait: the WAIT after a batch of appends, on the same connection.
            replication = store.replication
            channels.barrier = lambda _protocol: replication.confirm()
        _ClientRunner(reading).setServiceParent(services)
        streams = TimerService(1.0, channels.sample_streams)
        streams.clock = reactor
        streams.setServiceParent(services)
    directory = DaemonDirectory(commands, store, channels_id(channels))
    directory.addresses = store.listening
    # A fresh secret at each start: the other daemons read it from Redis to
    # fetch this daemon's files (docs/several-daemons.md, "Files across daemons").
    directory.files_token = secrets.token_urlsafe(32)
    store.directory = directory
    # Its holder id is the files folder's, set once the folder is known (tap).
    store.files = FileDirectory(commands, prefix, directory.daemon_id)
    store.replicas = replicas = ReplicationView(commands)
    directory.setServiceParent(services)

    def beat() -> None:
        directory.beat()
        replicas.poll()

    heartbeat = TimerService(1.0, beat)
    heartbeat.clock = reactor
    heartbeat.setServiceParent(services)
    Logger(namespace="lttx.tap").info(
        "engine redis: {where}, key prefix {prefix!r}", where=address.describe(), prefix=prefix)
    return store


def _changes(reactor: Any, address: RedisAddress, channels: ChannelRegistry,
             store: RedisStore) -> ChangeFeed:
    """The change feed of ``channels``' change log, on a connection of its own."""
    client = RedisClient(reactor, address, name="redis changes", scripts=(FEED_START,))
    feed = ChangeFeed(client, channels, store.changes_keys)
    channels.changes_source = store.feed = feed
    return feed


def new_daemon_id() -> bytes:
    return uuid.uuid4().bytes


def channels_id(channels: ChannelRegistry) -> bytes:
    return getattr(channels, "daemon_id", None) or new_daemon_id()


class _ClientRunner(Service):
    """Starts and stops a :class:`RedisClient` with the daemon."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    def startService(self) -> None:
        super().startService()
        self.client.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.client.stop()
