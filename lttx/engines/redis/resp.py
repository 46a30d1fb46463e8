"""
A small Twisted-native Redis client: RESP2, pipelining, scripts, reconnection.

- :class:`RedisProtocol` speaks RESP2 on one connection: every command is
  written at once (pipelined) and gets a Deferred, fired in order by the
  replies.  In pub/sub mode, ``message`` pushes go to a callback instead.
- :class:`RedisClient` keeps one such connection up by itself (a
  :class:`~twisted.application.internet.ClientService`: reconnects with
  backoff), authenticates, selects the database, loads the scripts and, for a
  pub/sub client, subscribes again to every channel it was subscribed to.
  While it has no connection, every call fails at once with
  :class:`lttx.errors.Unavailable` (and one log line per outage), so no caller
  ever waits on a Redis that is not there.
- With Sentinel, each connection attempt first asks the sentinels, in turn,
  for the current master, and checks ``ROLE`` once connected.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any, Callable, Optional, Sequence
from urllib.parse import unquote, urlparse

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ...errors import LTtxError, Unavailable


class RedisError(LTtxError):
    """Redis answered a command with an error reply (``-ERR ...``)."""

    code = "unavailable"  # the client of the daemon sees a back-end failure

    @property
    def kind(self) -> str:
        """The first word of the reply: ``ERR``, ``NOSCRIPT``, ``READONLY``, ..."""
        return self.message.split(" ", 1)[0]


def encode_command(args: Sequence[Any]) -> bytes:
    """One command as a RESP array of bulk strings (str: UTF-8; int/float: decimal)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = str(arg).encode("ascii")
        else:
            raise TypeError(f"a Redis argument must be bytes, str or a number, not {arg!r:.40}")
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


class _Incomplete(Exception):
    """The buffer ends inside an element; ``need``: the bytes it takes from its start."""

    def __init__(self, need: int) -> None:
        self.need = need


class _Array:
    """An array header: ``n`` elements follow."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def _parse_element(buf: bytes, pos: int) -> tuple[Any, int]:
    """
    One element at ``pos``: a scalar, nil, an error value or an array header.

    :raises _Incomplete: if ``buf`` ends before the element does.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete(len(buf) - pos + 1)
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    after = end + 2
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, after
        if len(buf) < after + n + 2:
            raise _Incomplete(after + n + 2 - pos)
        return buf[after:after + n], after + n + 2
    if kind == b":":
        return int(line), after
    if kind == b"+":
        return line.decode("utf-8", "replace"), after
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), after
    if kind == b"*":
        n = int(line)
        return (None if n < 0 else _Array(n)), after
    raise ValueError(f"not a RESP reply: {buf[pos:pos + 40]!r}")


class ReplyParser:
    """
    RESP2 replies out of a byte stream, in O(n) whatever the chunking: a
    partial reply is kept as the elements parsed so far plus the unparsed tail,
    and a large bulk string is joined once, when all of it is there.

    Bulk strings are bytes, nil is None, an error reply is a
    :class:`RedisError` value (inside an array it is just an element).
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = 0  # the unparsed bytes needed before parsing is worth trying
        self._stack: list[tuple[list[Any], int]] = []  # open arrays: items, length

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; the replies they complete."""
        self._chunks.append(data)
        self._size += len(data)
        if self._size < self._need:
            return []
        buf = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        replies: list[Any] = []
        pos = 0
        self._need = 0
        stack = self._stack
        while pos < len(buf):
            try:
                value, pos = _parse_element(buf, pos)
            except _Incomplete as e:
                self._need = e.need
                break
            if isinstance(value, _Array):
                if value.n:
                    stack.append(([], value.n))
                    continue
                value = []
            while stack:
                items, n = stack[-1]
                items.append(value)
                if len(items) < n:
                    break
                stack.pop()
                value = items
            else:
                replies.append(value)
        rest = buf[pos:]
        self._chunks = [rest] if rest else []
        self._size = len(rest)
        return replies


class RedisProtocol(Protocol):
    """
    One Redis connection: pipelined commands, one Deferred each, fired in order.

    :ivar on_message: called with ``(channel, data)`` (bytes) for each pub/sub
        message; set on a connection used for SUBSCRIBE.
    """

    log = Logger()

    def __init__(self) -> None:
        self._parser = ReplyParser()
        self._pending: deque[Deferred[Any]] = deque()
        self.on_message: Optional[Callable[[bytes, bytes], None]] = None
        #: called once when the connection is lost
        self.on_lost: Optional[Callable[[], None]] = None
        #: called with each channel Redis confirms a SUBSCRIBE for
        self.on_subscribed: Optional[Callable[[bytes], None]] = None
        self.lost = False

    def connectionMade(self) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def execute(self, *args: Any) -> Deferred[Any]:
        """Send one command; the Deferred fires with its reply or fails with
        :class:`RedisError` (an error reply) or :class:`Unavailable` (connection lost)."""
        return self.execute_many([args])[0]

    def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Deferred[Any]]:
        """Send several commands in one write (a pipeline)."""
        if self.lost:
            return [defer.fail(Unavailable("the connection to Redis was lost"))
                    for _ in commands]
        data = b"".join(encode_command(c) for c in commands)
        results: list[Deferred[Any]] = []
        if self.on_message is None:
            for _ in commands:
                d: Deferred[Any] = Deferred()
                self._pending.append(d)
                results.append(d)
        else:
            # A subscribed connection answers (UN)SUBSCRIBE with one push per
            # channel, not one reply per command: nobody waits for those.
            results = [defer.succeed(None) for _ in commands]
        self.transport.write(data)  # type: ignore[union-attr]
        return results

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ValueError:
            self.log.error("undecodable reply from Redis; closing the connection")
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for reply in replies:
            self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if self.on_message is not None and isinstance(reply, list):
            if reply and reply[0] == b"message":
                self.on_message(reply[1], reply[2])
            elif reply and reply[0] == b"subscribe" and self.on_subscribed is not None:
                self.on_subscribed(reply[1])
            return
        if not self._pending:
            self.log.error("a reply from Redis nobody asked for: {reply!r:.80}", reply=reply)
            return
        d = self._pending.popleft()
        if isinstance(reply, RedisError):
            d.errback(reply)
        else:
            d.callback(reply)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost = True
        pending, self._pending = self._pending, deque()
        for d in pending:
            d.errback(Unavailable("the connection to Redis was lost before its reply"))
        if self.on_lost is not None:
            self.on_lost()


class Script:
    """A Lua script, run by its SHA1 (EVALSHA) with EVAL as the fallback."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()


class RedisAddress:
    """Where Redis is: a URL, or a master name and sentinels."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0,
                 password: Optional[str] = None,
                 sentinels: Sequence[tuple[str, int]] = (),
                 master_name: Optional[str] = None) -> None:
        self.host, self.port, self.db, self.password = host, port, db, password
        self.sentinels = list(sentinels)
        self.master_name = master_name

    @classmethod
    def from_url(cls, url: str, password: Optional[str] = None) -> "RedisAddress":
        """``redis://[:password@]host[:port][/db]``."""
        parsed = urlparse(url)
        if parsed.scheme != "redis" or not parsed.hostname:
            raise ValueError(f"not a redis:// URL: {url!r}")
        db = int(parsed.path.lstrip("/") or 0)
        return cls(parsed.hostname, parsed.port or 6379, db,
                   password or (unquote(parsed.password) if parsed.password else None))

    def describe(self) -> str:
        if self.sentinels:
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {self.master_name!r} via {where}"
        return f"redis://{self.host}:{self.port}/{self.db}"


@implementer(IStreamClientEndpoint)
class _RedisEndpoint:
    """Connects to the address, asking the sentinels for the master first."""

    log = Logger()

    def __init__(self, reactor: Any, address: RedisAddress, client: "RedisClient") -> None:
        self.reactor, self.address, self.client = reactor, address, client

    @defer.inlineCallbacks
    def connect(self, factory: Any) -> Any:
        host, port = self.address.host, self.address.port
        if self.address.sentinels:
            host, port = yield self._ask_sentinels()
        self.client.server = f"{host}:{port}"
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=5)
        protocol = yield endpoint.connect(factory)
        return protocol

    @defer.inlineCallbacks
    def _ask_sentinels(self) -> Any:
        for host, port in self.address.sentinels:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=2)
            try:
                proto = yield endpoint.connect(Factory.forProtocol(RedisProtocol))
            except Exception as e:  # any failure: try the next sentinel
                self.log.info("sentinel {host}:{port} unreachable: {e}", host=host, port=port, e=e)
                continue
            try:
                reply = yield proto.execute(
                    "SENTINEL", "get-master-addr-by-name", self.address.master_name)
            except LTtxError as e:
                self.log.info("sentinel {host}:{port}: {e}", host=host, port=port, e=e)
                reply = None
            finally:
                proto.transport.loseConnection()
            if reply:
                return reply[0].decode(), int(reply[1])
        raise Unavailable(f"no sentinel knows the master {self.address.master_name!r}")


class RedisClient:
    """
    A Redis connection that stays up by itself.

    :param pubsub: a subscriber connection: pushes go to ``on_message`` and
        the channels of :meth:`subscribe` are subscribed again after a reconnect.
    :param scripts: loaded (SCRIPT LOAD) on every new connection.
    :param on_lost: called each time an established connection is lost.
    :param on_ready: called each time a connection is set up and ready.
    """

    log = Logger()

    def __init__(self, reactor: Any, address: RedisAddress, name: str = "redis",
                 pubsub: bool = False,
                 on_message: Optional[Callable[[bytes, bytes], None]] = None,
                 scripts: Sequence[Script] = (),
                 on_lost: Optional[Callable[[], None]] = None,
                 on_ready: Optional[Callable[[], None]] = None) -> None:
        self.reactor = reactor
        self.on_lost = on_lost
        self.on_ready = on_ready
        self.address = address
        self.name = name
        self.pubsub = pubsub
        self.on_message = on_message
        self.scripts = list(scripts)
        self.channels: set[bytes] = set()
        self.protocol: Optional[RedisProtocol] = None
        self.server = ""  # host:port of the connection (the master, with Sentinel)
        self.role = "unknown"
        self.connects = 0
        self._down_logged = False
        factory = Factory.forProtocol(RedisProtocol)
        self.service = ClientService(
            _RedisEndpoint(reactor, address, self), factory,
            retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=2.0, factor=2.0),
            clock=reactor, prepareConnection=self._prepare)

    def start(self) -> None:
        self.service.startService()

    def stop(self) -> Deferred[None]:
        self.protocol = None
        return self.service.stopService()

    @defer.inlineCallbacks
    def _prepare(self, proxy: Any) -> Any:
        """Authenticate, select, check the role, load scripts, resubscribe."""
        # ClientService hands over its proxy; attributes are set on the protocol.
        protocol: RedisProtocol = getattr(proxy, "_protocol", proxy)
        setup: list[tuple[Any, ...]] = []
        if self.address.password:
            setup.append(("AUTH", self.address.password))
        if self.address.db:
            setup.append(("SELECT", self.address.db))
        setup.append(("ROLE",))
        setup.extend(("SCRIPT", "LOAD", s.source) for s in self.scripts)
        try:
            replies = yield defer.gatherResults(protocol.execute_many(setup), consumeErrors=True)
        except defer.FirstError as e:
            error = e.subFailure.value
            self.log.error("{name}: Redis refused the connection set-up: {error}",
                           name=self.name, error=error)
            _drop(protocol)
            raise Unavailable(f"Redis refused the connection set-up: {error}") from None
        role = replies[len(setup) - 1 - len(self.scripts)]
        self.role = role[0].decode() if isinstance(role, list) and role else "unknown"
        if self.address.sentinels and self.role != "master":
            self.log.warn("{name}: {server} is a {role}, not the master; asking again",
                          name=self.name, server=self.server, role=self.role)
            _drop(protocol)
            raise Unavailable("connected to a replica")
        if self.pubsub:
            protocol.on_message = self.on_message
            protocol.on_subscribed = self._subscribed
            if self.channels:
                protocol.execute("SUBSCRIBE", *sorted(self.channels))
        protocol.on_lost = self._lost
        self.protocol = protocol
        self.connects += 1
        self._down_logged = False
        self.log.info("{name}: connected to Redis at {server} ({role})",
                      name=self.name, server=self.server, role=self.role)
        if self.on_ready is not None:
            self.on_ready()

    def _subscribed(self, channel: bytes) -> None:
        self.log.info("{name}: subscribed in Redis to {channel}", name=self.name,
                      channel=channel.decode("utf-8", "replace"))

    def _lost(self) -> None:
        if self.protocol is not None:
            self.protocol = None
            self.log.warn("{name}: lost the connection to Redis at {server}; reconnecting",
                          name=self.name, server=self.server)
            if self.on_lost is not None:
                self.on_lost()

    @property
    def connected(self) -> bool:
        return self.protocol is not None and not self.protocol.lost

    def _unavailable(self) -> Deferred[Any]:
        if not self._down_logged:
            self._down_logged = True
            self.log.warn("{name}: Redis ({where}) is unavailable; failing calls until it is back",
                          name=self.name, where=self.address.describe())
        return defer.fail(Unavailable(f"Redis ({self.address.describe()}) is unavailable"))

    def execute(self, *args: Any) -> Deferred[Any]:
        """One command; fails at once with :class:`Unavailable` without a connection."""
        protocol = self.protocol
        if protocol is None or protocol.lost:
            return self._unavailable()
        return self._check(protocol.execute(*args))

    def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Deferred[Any]:
        """Run a script by SHA1; on NOSCRIPT (a SCRIPT FLUSH), once more with EVAL."""
        d = self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

        def noscript(failure: Failure) -> Any:
            if isinstance(failure.value, RedisError) and failure.value.kind == "NOSCRIPT":
                return self.execute("EVAL", script.source, len(keys), *keys, *args)
            return failure
        return d.addErrback(noscript)

    def checked(self, d: Deferred[Any]) -> Deferred[Any]:
        """``d`` (a reply of this client's connection) with :meth:`execute`'s
        handling of READONLY (reconnect, and ``Unavailable``)."""
        return self._check(d)

    def _check(self, d: Deferred[Any]) -> Deferred[Any]:
        def readonly(failure: Failure) -> Any:
            # A master demoted by a failover: reconnect (and ask the sentinels).
            if isinstance(failure.value, RedisError) and failure.value.kind == "READONLY":
                protocol = self.protocol
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.loseConnection()
                return Failure(Unavailable("Redis is read-only (a failover is under way)"))
            return failure
        return d.addErrback(readonly)

    def subscribe(self, channels: Sequence[bytes]) -> None:
        """Subscribe (now if connected, and again after every reconnect)."""
        new = [c for c in channels if c not in self.channels]
        self.channels.update(new)
        if new and self.connected:
            self.protocol.execute("SUBSCRIBE", *new)  # type: ignore[union-attr]

    def unsubscribe(self, channels: Sequence[bytes]) -> None:
        gone = [c for c in channels if c in self.channels]
        self.channels.difference_update(gone)
        if gone and self.connected:
            self.protocol.execute("UNSUBSCRIBE", *gone)  # type: ignore[union-attr]

    def status(self) -> dict[str, Any]:
        return {"address": self.address.describe(), "server": self.server,
                "role": self.role if self.connected else "disconnected",
                "connects": self.connects}


def _drop(protocol: RedisProtocol) -> None:
    if protocol.transport is not None:
        protocol.transport.loseConnection()
