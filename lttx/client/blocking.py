"""
The blocking LTtx client for scripts, notebooks and threads: :class:`Client`,
made by :func:`connect`.  It runs an :class:`~lttx.client.asyncclient.AsyncClient`
on a reactor of its own in a background thread (:mod:`lttx.client.eventloop`)
and holds no protocol logic: each call waits for the Twisted-native one, and
pushes are batched across the thread boundary.  The variable commands come
from :class:`~lttx.client.commands.VariableCommands`.
"""

from __future__ import annotations

import atexit
import functools
import queue
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet.defer import Deferred

from ..errors import ConnectionLost, EncodeError, FrameTooLarge, LTtxError, TimeoutError
from ..wire import codec
from ..wire.frames import PREFIX
from .asyncclient import AsyncClient
from .callbacks import CallbackThread
from .commands import VariableCommands
from .dataframes import default
from .eventloop import EventLoop, Waiter
from .messages import DEFAULT_QUEUE_LIMIT, Message, MessageQueue
from .mirror import Mirror
from .pacing import PushPacing
from .requests import NOT_TAKEN, RequestConnection
from .watch import Change, Watch
from .settings import DEFAULT_PORT, DEFAULT_TIMEOUT, ConnectionSettings, split_address

#: Bytes of pushes the blocking client holds while the connection cannot take
#: them (its send buffer is full, or it reconnects) before ``push`` blocks.
DEFAULT_PUSH_BUFFER = 8 * 1024 * 1024


#: Most seconds close() waits for the callbacks of messages received before it.
CALLBACK_DRAIN = 5.0


class Client(VariableCommands):
    """
    The blocking LTtx client; safe to use from several threads at once.

    Made by :func:`connect`.  Each call waits for the daemon's reply (at most
    ``timeout`` seconds); :meth:`push` does not wait.  Messages of subscribed
    channels arrive in :attr:`Q` as :class:`Message` tuples.
    """

    def __init__(self, loop: EventLoop, client: AsyncClient, timeout: float,
                 messages: "queue.Queue[Message]",
                 push_buffer: int = DEFAULT_PUSH_BUFFER) -> None:
        self._loop = loop
        self._client = client
        self.timeout = timeout
        self.Q = messages
        self.push_buffer = push_buffer
        # Pushes not yet handed to the reactor thread, and their size; the
        # condition wakes a pusher blocked on a full buffer.
        self._push_lock = threading.Lock()
        self._push_room = threading.Condition(self._push_lock)
        # One packer, used under the push lock: msgpack.packb would build a
        # new Packer for every push.
        self._packer = codec.packer(default)
        self._push_frames: list[bytes] = []
        self._push_bytes = 0
        self._hand_over_pending = False
        self._pacing = PushPacing()  # which pushes leave from their thread
        self._awaiting_writable = False  # reactor thread only
        self._closed = False
        #: Where a call may be sent and its reply read by the calling thread
        #: (lttx.client.requests); it counts the pushes (under the push lock).
        self._requests = RequestConnection(self)
        self._callbacks = CallbackThread(messages)  # started by the first callback
        # A script that ends without close() still delivers what it pushed.
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    def _call(self, method: Callable[..., "Deferred[Any]"], *args: Any) -> Any:
        try:
            return self._loop.run(self._after_pushes, method, *args, timeout=self.timeout)
        except TimeoutError:
            if not self._client.connected:
                raise ConnectionLost(f"not connected to the daemon (reconnecting) "
                                     f"within {self.timeout} s") from None
            raise

    def call(self, command: str, *args: Any) -> Any:
        """
        Send any command (see docs/protocol.md) and return its result, waiting
        at most the client's timeout.

        :raises ConnectionLost: if the client stays disconnected that long.
        :raises TimeoutError: if the daemon does not answer in time.
        """
        requests = self._requests
        result = requests.call(command, args)
        if result is NOT_TAKEN:
            mark = requests.pushes  # every push counted here goes before this call
            try:
                result = self._call_main(command, args)
            except TimeoutError:
                # Unanswered, it may still be applied after a later call: as
                # for a push, the next call goes the main way, behind it.
                with self._push_lock:
                    requests.pushes += 1
                raise
            requests.replied(mark)
        return result

    def _call_main(self, command: str, args: tuple[Any, ...]) -> Any:
        """A call on the main connection, from this thread if it can (plain TCP,
        nothing waiting to be written before it), else by the reactor thread."""
        protocol = self._client.protocol
        if protocol is not None and protocol.sender is not None and protocol.sender.direct:
            waiter: Waiter[Any] = Waiter()
            waiting = self._loop.waiting
            waiting.add(waiter)  # failed by close(), as the reactor's calls are
            try:
                request_id = protocol.request_from_thread(command, args, waiter,
                                                          self._direct_prefix)
                if request_id is not None:
                    return self._wait(protocol, request_id, waiter)
            finally:
                waiting.discard(waiter)
        return self._call(self._client.call, command, *args)

    def _direct_prefix(self, protocol: Any) -> Optional[bytes]:
        """
        Under the send lock, in the calling thread, before a request is sent
        from it: the pushes made before it (they go first), or None when the
        client holds other bytes for the connection (the request then goes
        through the reactor thread, behind them).
        """
        if self._loop.in_loop_thread or self._closed or not self._client.idle_on(protocol):
            return None
        with self._push_room:
            frames = self._push_frames
            if not frames:
                return b""
            self._push_frames = []
            self._push_bytes = 0
            self._push_room.notify_all()
        return b"".join([PREFIX.pack(len(f)) + f for f in frames])

    def _wait(self, protocol: Any, request_id: int, waiter: "Waiter[Any]") -> Any:
        if not waiter.wait(self.timeout):
            protocol.forget(request_id)
            if not self._client.connected:
                raise ConnectionLost(f"not connected to the daemon (reconnecting) "
                                     f"within {self.timeout} s")
            raise TimeoutError(f"no reply within {self.timeout} seconds")
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _after_pushes(self, method: Callable[..., "Deferred[Any]"], *args: Any) -> Any:
        """In the reactor thread: hand over the pushes made so far, then make
        the call, which the client queues behind them (SPEC: call order)."""
        self._take_pushes()
        return method(*args)

    def _then(self, result: Any, transform: Callable[[Any], Any]) -> Any:
        return transform(result)

    def _present(self, result: Any, default: Any) -> Any:
        return result[0] if result else default  # (what _present_or's function does)

    @property
    def server_info(self) -> dict[str, Any]:
        """What the daemon said of itself at ``hello`` (version, limits)."""
        return self._client.server_info

    # -- channels -----------------------------------------------------------

    def subscribe(self, channels: "str | list[str]", password: Optional[str] = None,
                  conflate: bool = False,
                  callback: Optional[Callable[[Message], None]] = None,
                  history: Optional[int] = None, since: Optional[int] = None,
                  last_values: bool = False,
                  on_gap: Optional[Callable[[str, Optional[int], Optional[int]], None]] = None,
                  ) -> dict[str, int]:
        """
        Subscribe to channels: ``"a"``, ``"a@b"`` or ``["a", "b"]``.

        Messages arrive in :attr:`Q` as :class:`Message` tuples, or, with
        ``callback``, are passed to it in one dispatch thread (in order; a slow
        callback delays only later callbacks).

        :param password: the first subscriber of a channel sets it; later
            ones must give the same.
        :param conflate: while this client lags, the daemon sends only the
            newest message of each key it has not read (market data).
        :param history: first the channel's last ``history`` retained
            messages, then live ones.
        :param since: first the retained messages after seq ``since``, then live ones.
        :param last_values: first the newest message of each key the channel
            carried, then the rest.
        :param on_gap: called with ``(channel, first_missed, last_missed)``
            in the callback thread when the daemon says messages will not
            reach this client (``last_missed`` None: unknown).  Gaps are also
            logged and counted in :attr:`gaps`.
        :return: each channel's next sequence number.
        :raises AuthError: on a wrong password (nothing is subscribed).
        """
        deliver = None if callback is None else self._callbacks.for_messages(callback)
        gap = None if on_gap is None else self._callbacks.for_gaps(on_gap)
        return self._call(self._client.subscribe, channels, password, conflate, deliver,
                          history, since, last_values, gap)

    def publish(self, key: Any, data: Any, channel: str) -> int:
        """
        Publish ``data`` under ``key`` on ``channel`` and wait until the daemon
        has appended it to the channel's log; the message's seq.  Sent after
        the pushes made before it.

        :raises PermissionDenied: without the right to publish on ``channel``.
        :raises BadRequest: for a bad channel name or key.
        :raises FrameTooLarge: over the daemon's frame limit.
        """
        return self.call("publish", channel, key, data)  # as AsyncClient.publish

    @property
    def gaps(self) -> int:
        """How many gaps the daemon reported (see ``subscribe(on_gap=...)``)."""
        return self._client.gaps

    @property
    def gaps_by_channel(self) -> dict[str, int]:
        """The gaps reported, per channel."""
        return dict(self._client.gaps_by_channel)

    def unsubscribe(self, channels: "str | list[str]") -> list[str]:
        """Leave channels; the channels actually left."""
        return self._call(self._client.unsubscribe, channels)

    @property
    def subscriptions(self) -> list[str]:
        """The channels this client is subscribed to."""
        return self._client.subscriptions

    # -- watch and mirror -----------------------------------------------------

    def watch(self, pattern: str, callback: Optional[Callable[[Change], None]] = None,
              on_missed: Optional[Callable[[Optional[int], Optional[int]], None]] = None,
              ) -> Watch:
        """
        Watch every change of the variables matching the glob ``pattern`` (that
        the token may read), in order: ``w.get(timeout=None)`` gives each
        :class:`Change`, or, with ``callback``, each is passed to it in the
        callback thread (in order with messages).  Missed changes (the watch
        lagged past what the daemon retains, or it restarted) are never
        silent: ``get`` raises :class:`~lttx.errors.MissedChanges` in their
        place, or ``on_missed(first, last)`` is called, or else the callback
        gets a Change whose op is ``"missed"``.
        """
        deliver = None if callback is None else self._callbacks.for_values(callback)
        missed = (None if on_missed is None
                  else self._callbacks.for_values(lambda args: on_missed(*args)))
        return self._call(self._client.watch, pattern, deliver,
                          None if missed is None else (lambda first, last: missed((first, last))))

    def unwatch(self, pattern: str) -> list[str]:
        """Stop every watch and mirror of ``pattern``; the patterns still watched."""
        return self._call(self._client.unwatch, pattern)

    def mirror(self, pattern: str) -> Mirror:
        """
        A local, read-only :class:`~collections.abc.Mapping` of every variable
        matching ``pattern``, loaded now and kept in sync by the daemon: a read
        is a dictionary lookup.  Once a change made by this client returns,
        the mirror shows it.  ``m.revision(name)``; ``m.close()``.
        """
        mirror: Mirror = self._call(self._client.mirror, pattern)
        mirror._on_close = lambda m: self._call(self._client._close_mirror, m)
        return mirror

    # -- pushes -------------------------------------------------------------

    def send_file(self, path: str, name: Optional[str] = None, progress: bool = False,
                  resume: bool = True) -> dict[str, Any]:
        """
        Upload ``path`` (as ``name``, its base name by default); returns
        ``{"name", "size", "md5"}`` once the daemon has checked the MD5 and
        put the file in place.  An interrupted upload of the same file resumes
        from the byte the daemon holds.  ``progress=True`` shows a tqdm bar.
        The transfer has no overall time limit; it fails after ``timeout``
        seconds without progress.

        :raises BadFileName: for a name the daemon refuses.
        :raises ChecksumMismatch: if the bytes did not arrive intact (no file kept).
        :raises StorageError: over ``--max-file-size`` or with the daemon's disk full.
        """
        return self._loop.run(self._client.send_file, path, name, progress, resume)

    def recv_file(self, name: str, dest: str = ".", progress: bool = False,
                  resume: bool = True) -> dict[str, Any]:
        """
        Download ``name`` into the folder ``dest`` (or to the file path
        ``dest``); returns ``{"name", "size", "md5", "path"}``.  The file
        appears only once its MD5 matches; an interrupted download resumes.

        :raises NotFound: if the daemon has no such file (nothing is written).
        :raises ChecksumMismatch: if the bytes did not arrive intact (nothing kept).
        """
        return self._loop.run(self._client.recv_file, name, dest, progress, resume)

    def list_files(self) -> list[dict[str, Any]]:
        """The daemon's files: ``[{"name", "size", "mtime"}, ...]`` by name."""
        return self._call(self._client.list_files)

    def delete_file(self, name: str) -> bool:
        """Delete a stored file; whether it existed."""
        return self._call(self._client.delete_file, name)

    def push(self, key: Any, data: Any, channel: str) -> None:
        """
        Publish ``data`` under ``key`` on ``channel``; returns at once.

        The frame is encoded here (an unencodable value raises
        :class:`EncodeError` now).  On a plain TCP connection the first
        pushes of a burst are written from this thread, so a tick leaves at
        once; the rest of a longer burst, and a stream of pushes, are handed
        to the reactor thread together, in batches: a loop of pushes costs
        one thread hop per batch, not per push (:mod:`lttx.client.pacing`).
        Either way they keep their order with this thread's other pushes and
        calls.

        Memory is bounded: while the connection cannot take more (the
        daemon reads slower than this thread pushes, or the client
        reconnects), pushes wait here; past :attr:`push_buffer` bytes, ``push``
        blocks until there is room again, for at most the client's timeout.

        :raises ConnectionLost: if the client stays disconnected that long
            (this message is not queued).
        :raises TimeoutError: if the connection stays full that long (this
            message is not queued).
        """
        with self._push_lock:
            try:
                frame = self._packer.pack([codec.PUBLISH, channel, key, data])
            except (TypeError, ValueError, OverflowError) as e:
                raise _unencodable(e) from None
            limit = self._client.server_info.get("max_frame")
            if isinstance(limit, int) and len(frame) > limit:
                raise _too_large(frame, limit)
            if self._push_bytes > self.push_buffer:
                self._wait_for_room()
            # Behind the queued ones (their order, no clock read), or as pacing says.
            if self._push_frames or self._hand_over_pending or not self._pacing.direct():
                self._queue_push(frame)
                return
        self._send_or_queue([frame])

    def push_many(self, items: Iterable[tuple[Any, Any]], channel: str) -> None:
        """
        Publish each ``(key, data)`` of ``items`` on ``channel``, in order, as
        :meth:`push` would one by one, but written together: when nothing
        waits to be written, in one write from this thread, so a feed's
        packet of ticks reaches the daemon at once (as a Redis pipeline or a
        NATS flush sends it) and costs one system call.  Returns at once.

        A batch waits for room as one push does (:attr:`push_buffer`), then
        is queued whole: it may pass the bound by its own size.

        :raises EncodeError: if one of them cannot be encoded (none is sent).
        :raises FrameTooLarge: if one of them is over the daemon's frame limit
            (none is sent).
        :raises ConnectionLost, TimeoutError: as :meth:`push`.
        """
        items = list(items)  # (a generator may call this client: not under its lock)
        with self._push_lock:
            pack, frames = self._packer.pack, []
            limit = self._client.server_info.get("max_frame")
            for key, data in items:
                try:
                    frame = pack([codec.PUBLISH, channel, key, data])
                except (TypeError, ValueError, OverflowError) as e:
                    raise _unencodable(e) from None
                if isinstance(limit, int) and len(frame) > limit:
                    raise _too_large(frame, limit)
                frames.append(frame)
            if not frames:
                return
            if self._push_bytes > self.push_buffer:
                self._wait_for_room()
            if self._push_frames or self._hand_over_pending:
                for frame in frames:
                    self._queue_push(frame)
                return
        self._send_or_queue(frames)

    def _send_or_queue(self, frames: list[bytes]) -> None:
        """Outside the push lock: send pushes from this thread, or queue them
        if the connection cannot take them from here now."""
        sent = self._push_direct(b"".join([PREFIX.pack(len(f)) + f for f in frames]))
        with self._push_lock:
            if sent:
                self._requests.pushes += len(frames)  # counted once sent (see call)
            else:
                for frame in frames:
                    self._queue_push(frame)

    def _queue_push(self, frame: bytes) -> None:
        """Holding the push lock: queue a push for the reactor thread."""
        self._push_frames.append(frame)
        self._push_bytes += len(frame)
        self._requests.pushes += 1
        if not self._hand_over_pending:
            self._hand_over_pending = True
            self._loop.call_soon(self._hand_over_pushes)

    def _push_direct(self, data: bytes) -> bool:
        """Send pushes (``data``: their frames) from this thread, behind
        anything queued (see lttx.client.sending); False if they must be
        queued instead."""
        protocol = self._client.protocol
        sender = protocol.sender if protocol is not None else None
        if sender is None or not sender.direct:
            return False
        with sender.lock:
            if protocol.error is not None or not sender.idle():
                return False
            first = self._direct_prefix(protocol)
            if first is None:
                return False
            sender.send_from_thread(first + data)
        return True

    def _wait_for_room(self) -> None:
        """Wait (holding the condition) until pushes drop under the bound."""
        deadline = time.monotonic() + self.timeout
        while self._push_bytes > self.push_buffer and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                if not self._client.connected:
                    raise ConnectionLost(
                        f"push: not reconnected within {self.timeout} s and "
                        f"{self._push_bytes} bytes of pushes are waiting")
                raise TimeoutError(f"push: the daemon took no pushes for {self.timeout} s")
            self._push_room.wait(left)
        if self._closed:
            raise LTtxError("the client is closed")

    def _hand_over_pushes(self) -> None:
        """In the reactor thread: write the waiting pushes once the transport takes them."""
        if not self._client.writable:
            if not self._awaiting_writable:
                self._awaiting_writable = True
                self._client.when_writable().addCallback(self._writable_again)
            return
        self._take_pushes()

    def _writable_again(self, _: Any) -> None:
        self._awaiting_writable = False
        self._hand_over_pushes()

    def _take_pushes(self) -> None:
        # Taken and written under the send lock: a request sent meanwhile
        # from a calling thread cannot overtake them (lttx.client.sending).
        with self._client.send_lock:
            with self._push_room:
                frames, self._push_frames = self._push_frames, []
                self._push_bytes = 0
                self._hand_over_pending = False
                if frames:
                    self._pacing.taken()
                self._push_room.notify_all()
            if frames:
                self._client.write_pushes(frames)

    def flush(self) -> None:
        """
        Wait until every push made so far is handed to the connection.

        :raises ConnectionLost: if the client is disconnected for the whole timeout.
        """
        self._call(self._flush_in_loop)

    def _flush_in_loop(self) -> "Deferred[None]":
        def written(_: Any) -> "Deferred[None]":
            self._take_pushes()
            return self._client.flush()

        return self._client.when_writable().addCallback(written)

    def close(self, timeout: Optional[float] = None) -> None:
        """
        Flush pending pushes, close the connection and stop the client's thread.

        Called by itself at interpreter exit if the program did not.

        :param timeout: seconds to wait for the pushes to be written (the
            client's timeout by default).
        """
        if self._loop.in_loop_thread:
            raise RuntimeError("close() the blocking client from outside its callbacks")
        if self._closed:
            return
        atexit.unregister(self._exit_hook)
        try:
            self._loop.run(self._close_in_loop, timeout=self.timeout if timeout is None
                           else timeout)
        except LTtxError as e:
            # The connection is gone either way; stopping the loop is what is left.
            self._client.log.warn("closing: pushes not yet written may be lost ({error})",
                                  error=e)
        finally:
            with self._push_room:
                self._closed = True
                self._push_room.notify_all()
            self._requests.close()
            self._loop.stop()
            # Callbacks (and on_gap) of what arrived before close() run
            # first, for a few seconds at most.
            self._callbacks.stop(min(CALLBACK_DRAIN, self.timeout if timeout is None else timeout))

    def _close_in_loop(self) -> "Deferred[None]":
        with self._push_room:
            frames, self._push_frames = self._push_frames, []
            self._push_bytes = 0
        self._client.push_frames(frames)
        return self._client.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _unencodable(e: Exception) -> EncodeError:
    """The error for a push whose value the packer refused."""
    if isinstance(e, EncodeError):  # a DataFrame refused (lttx.client.dataframes)
        return e
    return EncodeError(f"cannot encode value: {e}")


def _too_large(frame: bytes, limit: int) -> FrameTooLarge:
    """The daemon would close the connection on it: refused here."""
    return FrameTooLarge(f"push needs a frame of {len(frame)} bytes, over the "
                         f"daemon's limit of {limit}")


#: Seconds a client left open at interpreter exit has to write its pushes.
EXIT_FLUSH_TIMEOUT = 10.0


def _close_at_exit(ref: "weakref.ref[Client]") -> None:
    client = ref()
    if client is not None:
        client.close(timeout=min(client.timeout, EXIT_FLUSH_TIMEOUT))


def connect(host: "str | Sequence[str]" = "127.0.0.1", port: int = DEFAULT_PORT,
            token: Optional[str] = None,
            timeout: float = DEFAULT_TIMEOUT, push_buffer: int = DEFAULT_PUSH_BUFFER,
            tls: bool = False, ca: Optional[str] = None,
            queue_limit: int = DEFAULT_QUEUE_LIMIT) -> Client:
    """
    Connect a blocking client to an LTtx daemon.

    After a lost connection the client reconnects by itself (with backoff),
    re-authenticates and resubscribes; calls made meanwhile wait for it.

    :param token: the daemon's shared secret (None for a daemon without one).
    :param timeout: seconds to wait for each reply, and for the connection.
    :param push_buffer: bytes of pushes held while the connection cannot
        take them before :meth:`Client.push` blocks.
    :param tls: speak TLS (the daemon listens on an ``ssl:`` endpoint); the
        daemon's certificate must be signed by a trusted CA and be for ``host``.
    :param ca: a PEM file of the CA(s) to trust; None trusts the system's CAs.
    :param queue_limit: most messages :attr:`Client.Q` holds; while it is full,
        new messages are dropped and counted in ``Client.Q.dropped``.
    :raises AuthError: on a wrong token.
    :raises TLSError: when the certificate is not trusted or not for ``host``.
    :raises ConnectError: when the daemon cannot be reached.

    ``host`` may be a list of daemons, ``["host1:2025", "host2:2025"]`` (of one
    data center, on one Redis): the client connects to the first it can reach,
    and when that connection is lost it tries the next ones, in turn, and
    resubscribes there.
    """
    addresses: tuple[tuple[str, int], ...] = ()
    if not isinstance(host, str):
        addresses = tuple(split_address(a, port) for a in host)
        if not addresses:
            raise ValueError("connect needs at least one address")
        host, port = addresses[0]
    loop = EventLoop()
    messages = MessageQueue(queue_limit)
    try:
        settings = ConnectionSettings(host, port, token, timeout, tls=tls, ca=ca,
                                      addresses=addresses)
        client = loop.run(AsyncClient.connect, loop.reactor, settings, messages.put,
                          messages.put_many, timeout=timeout + 1)
    except BaseException:
        loop.stop()
        raise
    return Client(loop, client, timeout, messages, push_buffer)


__all__ = ["DEFAULT_PUSH_BUFFER", "Client", "connect"]
