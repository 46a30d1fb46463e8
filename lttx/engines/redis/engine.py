"""
The Redis engine assembled: :func:`make_redis_engine` builds the Redis
clients, the store, the channel bridge's connections and the daemon directory
under the daemon's services, from the ``--redis*`` options.

- Variables: :class:`lttx.engines.redis.store.RedisStore`.
- Channels: :class:`lttx.engines.redis.channels.SharedChannelRegistry`.
- Daemons: :class:`lttx.engines.redis.directory.DaemonDirectory`.
- Files: :class:`lttx.engines.redis.filedir.FileDirectory` (who holds which
  file; the daemon's side is :mod:`lttx.server.shared_files`), and the
  replicas' lag (:class:`lttx.engines.redis.replication.ReplicationView`).
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
from .channels import SharedChannelRegistry
from .directory import DaemonDirectory
from .filedir import SCRIPTS as FILE_SCRIPTS
from .filedir import FileDirectory
from .replication import ReplicationView
from .resp import RedisAddress, RedisClient
from .store import SCRIPTS, RedisStore


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
    replication: Optional[ReplicationView] = None

    def __init__(self, client: RedisClient, prefix: str = "lttx:", clock: Any = None) -> None:
        super().__init__(client, prefix, *(() if clock is None else (clock,)))
        #: host:port of each listener (the tap adds them once listening)
        self.listening: list[str] = []

    def status(self) -> dict[str, Any]:
        status = super().status()
        if self.directory is not None:
            status.update(self.directory.status())
        if self.files is not None:
            status["files"] = self.files.status()
        if self.replication is not None:
            status["replication"] = self.replication.status()
        return status


def make_redis_engine(options: Any, environ: dict[str, str], reactor: Any,
                      channels: ChannelRegistry, parent: MultiService) -> RedisStore:
    """
    Build the Redis clients, the store and the directory under ``parent``;
    join ``channels`` (a :class:`SharedChannelRegistry`) to Redis.
    """
    address = redis_address(options, environ)
    prefix = options.get("redis-prefix") or "lttx:"
    commands = RedisClient(reactor, address, name="redis", scripts=SCRIPTS + FILE_SCRIPTS)
    store = _EngineStore(commands, prefix, reactor.seconds)
    services = MultiService()
    services.setServiceParent(parent)
    _ClientRunner(commands).setServiceParent(services)
    if isinstance(channels, SharedChannelRegistry):
        subscriber = RedisClient(reactor, address, name="redis pub/sub", pubsub=True,
                                 on_message=channels.message_received,
                                 on_lost=channels.redis_lost)
        channels.attach(commands, subscriber)
        _ClientRunner(subscriber).setServiceParent(services)
    directory = DaemonDirectory(commands, store, channels_id(channels))
    directory.addresses = store.listening
    # A fresh secret at each start: the other daemons read it from Redis to
    # fetch this daemon's files (docs/several-daemons.md, "Files across daemons").
    directory.files_token = secrets.token_urlsafe(32)
    store.directory = directory
    # Its holder id is the files folder's, set once the folder is known (tap).
    store.files = FileDirectory(commands, prefix, directory.daemon_id)
    store.replication = replication = ReplicationView(commands)
    directory.setServiceParent(services)

    def beat() -> None:
        directory.beat()
        replication.poll()

    heartbeat = TimerService(1.0, beat)
    heartbeat.clock = reactor
    heartbeat.setServiceParent(services)
    Logger(namespace="lttx.tap").info(
        "engine redis: {where}, key prefix {prefix!r}", where=address.describe(), prefix=prefix)
    return store


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
