"""
The client's side of one connection to the daemon, command or file
(:class:`ClientProtocol`): request ids and the replies and error frames that
answer them, per-request time limits, the raw frames of a download, the
first fatal error, and the subscriber's hot path that decodes MESSAGE frames
in batches.  Frames are split by :class:`lttx.wire.framing.FrameDecoder`.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

import msgpack
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..diskio import read_big, read_size
from ..errors import (
    BadRequest,
    ConnectionLost,
    FrameTooLarge,
    LTtxError,
    TimeoutError,
    error_from_wire,
)
from ..wire import codec
from ..wire.batches import BATCH_HEAD, MESSAGES, batch_messages
from ..wire.frames import MESSAGE_HEAD, PREFIX
from ..wire.framing import FrameDecoder, FrameTooLong
from .dataframes import default, ext_hook
from .messages import Message
from .sending import Sender

_new_tuple = tuple.__new__

#: The two kinds of connection a client opens (``hello``'s ``mode`` option).
COMMAND = "command"
FILE = "file"


class ClientProtocol(Protocol):
    """
    The client's side of one connection: ids, pending replies, pushes and raw data in.

    :param on_message: called with each MESSAGE frame's :class:`Message`
        until :meth:`set_receivers` says otherwise; None (a file connection)
        makes a MESSAGE frame a protocol violation.
    :param on_notice: called with ``(code, message)`` of each NOTICE frame.
    :param reactor: the clock of per-request time limits (``timeout=`` of
        :meth:`request`); needed only by requests that have one.
    :param mode: :data:`COMMAND` or :data:`FILE`.  On a file connection an
        error frame that answers no request ends the transfer (it is fatal);
        on a command connection it is reported as a notice and calls go on.
    """

    log = Logger()
    # A TCP or TLS transport: more than ITransport (disconnecting, producers, abort).
    transport: Any

    def __init__(self, on_message: Optional[Callable[[Message], None]] = None,
                 on_notice: Optional[Callable[[str, str], None]] = None, *,
                 reactor: Optional[IReactorTime] = None, mode: str = COMMAND) -> None:
        self.max_frame = 64 * 1024 * 1024  # until hello tells the daemon's
        self.mode = mode
        self.reactor = reactor
        #: What the daemon said of itself at ``hello`` (set by open_connection).
        self.server_info: dict[str, Any] = {}
        self._on_message = on_message
        self._on_notice = on_notice if on_notice is not None else self._log_notice
        self._on_messages: Optional[Callable[[list[Message]], None]] = None
        # Gap notices ([4, "gap", text, detail]): to the notice receiver unless set.
        self._on_gap: Optional[Callable[[str, str, dict[str, Any]], None]] = None
        self._batch: Optional[list[Message]] = None
        # No limit of its own (a 4-byte prefix is under 2**32): the daemon's
        # max_frame bounds what it sends.
        self._decoder = FrameDecoder(2**32)
        self._ids = itertools.count(1)
        self._pending: dict[int, Deferred[Any]] = {}
        self._paused = False  # reads held back (a download's disk lags)
        # A download: the request whose reply announces raw frames, how many
        # bytes of them are still to come, where they go, and what came early.
        self._raw_after: Optional[int] = None
        self.raw_left = 0
        self._raw_sink: Optional[Callable[[bytes], None]] = None
        self._early: list[bytes] = []
        #: The first fatal error (a time-out, a broken frame, the loss):
        #: pending and later requests fail with it.
        self.error: Optional[LTtxError] = None
        #: Called with each fatal error, e.g. to stop a transfer at once.
        self.on_error: Callable[[LTtxError], None] = lambda error: None
        self.connected_deferred: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        #: Every write of the connection goes through it (set at connectionMade).
        self.sender: Optional[Sender] = None

    @property
    def label(self) -> str:
        return "file connection" if self.mode == FILE else "connection"

    # -- the connection -----------------------------------------------------

    def connectionMade(self) -> None:
        call_from_thread = getattr(self.reactor, "callFromThread", None)
        self.sender = Sender(self.transport, call_from_thread, direct=self.mode == COMMAND)
        if self.mode == FILE:
            read_big(self.transport)
        else:
            # Disable Nagle: a push must not wait 40 ms for a delayed ACK.
            set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                set_no_delay(True)
        # A daemon whose machine vanished without a FIN is found out by the
        # kernel, so the client reconnects instead of waiting forever.
        keepalive = getattr(self.transport, "setTcpKeepAlive", None)
        if keepalive is not None:
            keepalive(True)
        self.connected_deferred.callback(None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        sender = self.sender
        if sender is not None:
            with sender.lock:  # a calling thread's request is in _pending, or fails
                self._lost()
                sender.close()
        else:
            self._lost()
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(self.error)
        self.on_error(self.error)
        self.lost.callback(None)

    def _lost(self) -> None:
        if self.error is None:
            self.error = ConnectionLost(f"the {self.label} to the daemon was lost")

    def fatal(self, error: LTtxError, abort: bool = False) -> None:
        """
        End the connection for ``error``: pending and later requests fail with
        it (unless another error came first).  ``abort`` drops what is not yet
        written (the connection's state is unknown, e.g. after a time-out).
        """
        if self.error is None:
            self.error = error
        self.on_error(error)
        if self.transport is not None:
            if abort:
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()

    def _broken(self, error: LTtxError) -> None:
        # A daemon speaking another protocol: nothing more can be trusted.
        self.log.error("{label}: {error}; closing", label=self.label, error=error)
        self.fatal(error)

    # -- receiving ----------------------------------------------------------

    def set_receivers(self, on_messages: Callable[[list[Message]], None],
                      on_notice: Callable[[str, str], None],
                      on_gap: Optional[Callable[[str, str, dict[str, Any]], None]] = None,
                      ) -> None:
        """
        Where messages and notices go from now on: the messages of each chunk
        of received bytes are passed together, in order, to ``on_messages``;
        a notice with a detail map (a gap notice) to ``on_gap`` if given,
        after the messages before it.
        """
        self._on_messages = on_messages
        self._on_message = lambda message: on_messages([message])
        self._on_notice = on_notice
        self._on_gap = on_gap

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        decoder.feed(data)
        if self._on_messages is None:
            # File connections and connections not yet handed to a client:
            # one frame at a time, as long as reads are not paused.
            while not self._paused and not self.transport.disconnecting:
                frame = decoder.next_frame()
                if frame is None:
                    return
                self.frame_received(frame)
            return
        # The hot path of a subscriber: the read's frames are split in one
        # loop; MESSAGE frames (payload head 95 03) are decoded straight into
        # a batch; other frames go through frame_received, after the
        # messages before them.
        if self.transport.disconnecting:
            return  # closing after a fatal error: nothing more is read
        try:
            frames = decoder.take_all()
        except FrameTooLong as e:
            self._broken(BadRequest(f"undecodable frame from the daemon: {e}"))
            return
        read_size(self.transport, decoder.collecting)  # a large reply coming?
        if not frames:
            return
        batch: list[Message] = []
        self._batch = batch
        append, unpackb, hook = batch.append, msgpack.unpackb, ext_hook
        transport = self.transport
        remaining = iter(frames)
        try:
            for frame in remaining:
                if frame[:2] == MESSAGE_HEAD:
                    try:
                        # What codec.decode does, without its Python frame (a
                        # functools.partial would copy its keywords per call).
                        decoded = unpackb(frame, raw=False, strict_map_key=False,
                                          ext_hook=hook, use_list=True)
                    except Exception:  # not one valid value, or a refused extension
                        self.frame_received(frame)  # reports and closes
                        break
                    # Five elements (the head says so): a Message, no Python frame.
                    append(_new_tuple(Message, decoded[1:]))
                    continue
                if frame[:2] == BATCH_HEAD:
                    # A MESSAGES frame (lttx.wire.batches): one unpackb for
                    # all its messages, a Message each in one C-driven loop.
                    try:
                        decoded = unpackb(frame, raw=False, strict_map_key=False,
                                          ext_hook=hook, use_list=True)
                        channel, flat = batch_messages(decoded)
                    except Exception:  # not one valid value, or not a batch's shape
                        self.frame_received(frame)  # reports and closes
                        break
                    items = iter(flat)
                    batch.extend([_new_tuple(Message, (channel, key, data, seq))
                                  for key, data, seq in zip(items, items, items)])
                    continue
                if batch:  # what came before a reply is delivered before it
                    self._on_messages(batch)
                    batch = self._batch = []
                    append = batch.append
                self.frame_received(frame)
                if transport.disconnecting:
                    break
                if self.raw_left > 0:
                    # Raw data follows (a download's reply): the rest of
                    # the read is taken a frame at a time.
                    for frame in remaining:
                        if transport.disconnecting:
                            break
                        self.frame_received(frame)
                    break
        finally:
            self._batch = None
            if batch:
                self._on_messages(batch)

    def frame_received(self, frame: bytes) -> None:
        """One frame's payload: raw file data, or a decoded frame to act on."""
        if self.raw_left > 0:
            self._raw_received(frame)
            return
        try:
            message = codec.decode(frame, ext_hook)
            kind = message[0]
            if kind == codec.MESSAGE and self._on_message is not None:
                if self._batch is not None:
                    self._batch.append(Message._make(message[1:5]))
                else:
                    self._on_message(Message._make(message[1:5]))
            elif kind == MESSAGES and self._on_message is not None:
                channel, flat = batch_messages(message)
                items = iter(flat)
                messages = [Message(channel, key, data, seq)
                            for key, data, seq in zip(items, items, items)]
                if self._batch is not None:
                    self._batch.extend(messages)
                elif self._on_messages is not None:
                    self._on_messages(messages)
                else:
                    for one in messages:
                        self._on_message(one)
            elif kind == codec.REPLY or kind == codec.ERROR:
                self._settle(message)
            elif kind == codec.NOTICE:
                if (len(message) > 3 and isinstance(message[3], dict)
                        and self._on_gap is not None):
                    self._on_gap(message[1], message[2], message[3])
                else:
                    self._on_notice(message[1], message[2])
            else:
                raise BadRequest(f"unexpected frame kind {kind!r}")
        except (LTtxError, IndexError, TypeError, KeyError, ValueError) as e:
            self._broken(BadRequest(f"undecodable frame from the daemon: {e}"))

    def _settle(self, message: list[Any]) -> None:
        """Fire the Deferred of the request a REPLY or ERROR frame answers."""
        request_id = message[1]
        if message[0] == codec.REPLY:
            if request_id == self._raw_after and request_id is not None:
                # Raw frames follow this reply at once: count them from here.
                self._raw_after = None
                self.raw_left = int(message[2]["size"]) - int(message[2]["offset"])
            d = self._pending.pop(request_id, None)
            if d is not None:
                d.callback(message[2])
            return
        error = error_from_wire(message[2], message[3])
        d = self._pending.pop(request_id, None)
        if d is not None:
            d.errback(error)
        elif self.mode == FILE:
            # The daemon could not read a frame of the transfer: it is over.
            self.fatal(error)
        else:
            # The daemon could not read a frame (nil id); the connection goes on.
            self._on_notice(error.code, error.message)

    def _raw_received(self, chunk: bytes) -> None:
        self.raw_left -= len(chunk)
        if self.raw_left < 0:
            self._broken(BadRequest("the daemon sent more data than announced"))
        elif self._raw_sink is None:
            self._early.append(chunk)
        else:
            self._raw_sink(chunk)

    def set_sink(self, sink: Callable[[bytes], None]) -> None:
        """Where the raw frames of a download go (those already here first)."""
        self._raw_sink = sink
        early, self._early = self._early, []
        for chunk in early:
            sink(chunk)

    # Reads can be held back while a download's disk lags (StreamWriter
    # pauses its producer, this protocol): frames stay in the decoder.

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()
        self.dataReceived(b"")

    def stopProducing(self) -> None:
        self.transport.loseConnection()

    def _log_notice(self, code: str, message: str) -> None:
        self.log.warn("the daemon says: {code}: {message}", code=code, message=message)

    # -- sending ------------------------------------------------------------

    def request(self, command: str, *args: Any, timeout: Optional[float] = None,
                data_follows: bool = False,
                writer: Optional[Callable[[bytes], None]] = None) -> "Deferred[Any]":
        """
        Send one request; the Deferred fires with its result or fails with its error.

        :param timeout: seconds to wait for the reply (None: no limit).
            Without a reply in time the request fails with
            :class:`~lttx.errors.TimeoutError` and the connection is aborted,
            since its state is unknown.
        :param data_follows: the reply (``{"size", "offset"}``) is followed by
            ``size - offset`` bytes of raw frames, given to :meth:`set_sink`'s sink.
        :param writer: called with the request's payload instead of writing
            it now (the client queues it behind pushes not yet written).
        """
        if self.error is not None:
            return fail(self.error)
        if self.transport is None or self.transport.disconnecting:
            return fail(ConnectionLost(f"the {self.label} to the daemon was lost"))
        request_id = next(self._ids)
        try:
            # Large DataFrames and arrays are pieces of their own, not copied.
            pieces = codec.encode_pieces([codec.REQUEST, request_id, command, list(args)],
                                         default)
        except LTtxError as e:
            return fail(e)
        size = len(pieces[0]) if len(pieces) == 1 else sum(map(len, pieces))
        if size > self.max_frame:
            return fail(FrameTooLarge(
                f"{command} needs a frame of {size} bytes, over the daemon's "
                f"limit of {self.max_frame}"))

        def forget(_: Deferred[Any]) -> None:
            self._pending.pop(request_id, None)

        d: Deferred[Any] = Deferred(forget)
        self._pending[request_id] = d
        if data_follows:
            self._raw_after = request_id
        if writer is not None:
            # Queued behind pushes not yet written: one payload (a large value
            # is joined here, the price of keeping the call order).
            writer(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        elif len(pieces) == 1:
            self._write(PREFIX.pack(size) + pieces[0])  # sent now, not a reactor turn later
        elif self.sender is not None:
            self.sender.write_sequence([PREFIX.pack(size) + pieces[0], *pieces[1:]])
        else:
            self.transport.writeSequence([PREFIX.pack(size) + pieces[0], *pieces[1:]])
        if timeout is None:
            return d
        if self.reactor is None:
            raise ValueError("a request with a timeout needs the protocol's reactor")

        def timed_out(result: Any, seconds: float) -> None:
            error = TimeoutError(f"no reply to {command} within {seconds:.0f} seconds")
            self.fatal(error, abort=True)
            raise error

        return d.addTimeout(timeout, self.reactor, onTimeoutCancel=timed_out)

    def write_frames(self, frames: list[bytes]) -> None:
        """Write already-encoded frames in one write (for batched pushes)."""
        if self.transport is not None and not self.transport.disconnecting:
            self._write(b"".join(PREFIX.pack(len(f)) + f for f in frames))

    def _write(self, data: bytes) -> None:
        if self.sender is not None:
            self.sender.write(data)
        else:
            self.transport.write(data)

    def request_from_thread(self, command: str, args: tuple[Any, ...], waiter: Any,
                            before: Callable[["ClientProtocol"], Optional[bytes]],
                            ) -> Optional[int]:
        """
        In a blocking caller's thread: send one request from there (see
        :mod:`lttx.client.sending`); its reply settles ``waiter`` (its
        ``callback``/``errback``) in the reactor thread.

        :param before: called under the send lock once the connection is
            idle: the bytes that must go first (pushes made before), or None
            if the client cannot send now.
        :return: the request's id (to :meth:`forget` it), or None if the
            request must go through the reactor thread (nothing was sent).
        :raises EncodeError: for a value that cannot be encoded.
        :raises FrameTooLarge: over the daemon's frame limit.
        """
        sender = self.sender
        if sender is None or not sender.direct:
            return None
        request_id = next(self._ids)
        pieces = codec.encode_pieces([codec.REQUEST, request_id, command, list(args)], default)
        payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if len(payload) > self.max_frame:
            raise FrameTooLarge(f"{command} needs a frame of {len(payload)} bytes, over "
                                f"the daemon's limit of {self.max_frame}")
        with sender.lock:
            if self.error is not None or not sender.idle():
                return None
            first = before(self)
            if first is None:
                return None
            self._pending[request_id] = waiter
            sender.send_from_thread(first + PREFIX.pack(len(payload)) + payload)
        return request_id

    def forget(self, request_id: int) -> None:
        """A request whose caller stopped waiting: its reply, if any, is dropped."""
        self._pending.pop(request_id, None)


__all__ = ["COMMAND", "FILE", "ClientProtocol"]
