"""
The client's file calls: upload, download, list and delete, each on a
connection of its own (``hello`` with ``{"mode": "file"}``), so a transfer
never holds up the other calls of a client.  The daemon's side is
:mod:`lttx.server.files`; the exchange is in ``docs/protocol.md`` ("File
transfer").

Uploads are read by Twisted's :class:`FileSender`, hashed as they are sent;
downloads are written aside by a :class:`~lttx.diskio.StreamWriter` (in a
thread, pausing the connection while the disk lags), and renamed into place
only once their MD5 matches the daemon's.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import TYPE_CHECKING, Any, Callable, Optional

try:
    import fcntl
except ImportError:  # Windows: downloads to one target are not locked against each other
    fcntl = None  # type: ignore[assignment]

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.endpoints import connectProtocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender, Int32StringReceiver
from twisted.python.failure import Failure

from ..diskio import (
    RunInThread,
    StreamWriter,
    hash_file_prefix,
    pool_runner,
    read_big,
    stop_sender,
    storage_error,
    sync_file,
    unlink_quietly,
)
from ..errors import (
    BadRequest,
    ChecksumMismatch,
    ConnectError,
    ConnectionLost,
    FileBusy,
    LTtxError,
    NotFound,
    TimeoutError,
)
from ..wire import codec
from ..wire.frames import FILE_CHUNK_SIZE, PREFIX
from ..wire.names import check_file_name
from .replies import settle

if TYPE_CHECKING:
    from .settings import ConnectionSettings

#: Bytes per second a slow disk still hashes or syncs: how long the client
#: waits, beyond its timeout, for replies that hash a prefix or fsync a file.
_SLOW_DISK = 20 * 1024 * 1024


# -- the client ----------------------------------------------------------------

class FileClientProtocol(Int32StringReceiver):
    """The client's side of a file connection: requests, replies, raw data in."""

    log = Logger()

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.MAX_LENGTH = 2**31
        self.reactor = reactor
        self.timeout = timeout
        self.max_frame = FILE_CHUNK_SIZE  # the daemon's limit, once hello tells it
        self._next_id = 0
        self._pending: dict[int, Deferred[Any]] = {}
        self._raw_after: Optional[int] = None
        self.raw_left = 0
        self.raw_sink: Optional[Callable[[bytes], None]] = None
        self._early: list[bytes] = []
        self.error: Optional[LTtxError] = None
        self.on_error: Callable[[LTtxError], None] = lambda error: None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        read_big(self.transport)

    def request(self, command: str, *args: Any, data_follows: bool = False,
                extra_time: float = 0.0) -> "Deferred[Any]":
        """
        Send a request; the Deferred fires with its result.

        :param data_follows: the reply (``{"size", "offset"}``) is followed by
            ``size - offset`` bytes of raw frames, given to :attr:`raw_sink`.
        :param extra_time: seconds allowed beyond the client's timeout (for a
            reply that waits on hashing or syncing a big file).
        :raises TimeoutError: (as a failure) without a reply in time; the
            connection is then aborted, since its state is unknown.
        """
        if self.error is not None:
            return fail(self.error)
        if self.transport is None or self.transport.disconnecting:
            return fail(ConnectionLost("the file connection was lost"))
        self._next_id += 1
        request_id = self._next_id

        def forget(_: Deferred[Any]) -> None:
            self._pending.pop(request_id, None)

        d: Deferred[Any] = Deferred(forget)
        self._pending[request_id] = d
        if data_follows:
            self._raw_after = request_id
        self.sendString(codec.encode([codec.REQUEST, request_id, command, list(args)]))
        return d.addTimeout(self.timeout + extra_time, self.reactor,
                            onTimeoutCancel=lambda result, seconds: self._timed_out(
                                command, seconds))

    def _timed_out(self, command: str, seconds: float) -> None:
        error = TimeoutError(f"no reply to {command} within {seconds:.0f} seconds")
        if self.error is None:
            self.error = error
        self.transport.abortConnection()
        raise error

    def set_sink(self, sink: Callable[[bytes], None]) -> None:
        self.raw_sink = sink
        early, self._early = self._early, []
        for chunk in early:
            sink(chunk)

    def stringReceived(self, frame: bytes) -> None:
        if self.raw_left > 0:
            self.raw_left -= len(frame)
            if self.raw_left < 0:
                self._broken(BadRequest("the daemon sent more data than announced"))
            elif self.raw_sink is None:
                self._early.append(frame)
            else:
                self.raw_sink(frame)
            return
        try:
            message = codec.decode(frame)
            kind = message[0]
            if kind == codec.REPLY or kind == codec.ERROR:
                if kind == codec.REPLY and message[1] == self._raw_after:
                    self._raw_after = None
                    self.raw_left = int(message[2]["size"]) - int(message[2]["offset"])
                unanswered = settle(self._pending, message)
                if unanswered is not None:
                    self.error = unanswered
                    self.on_error(unanswered)
            elif kind == codec.NOTICE:
                self.log.warn("the daemon says: {code}: {message}", code=message[1],
                              message=message[2])
            else:
                raise BadRequest(f"unexpected frame kind {kind!r}")
        except (LTtxError, IndexError, TypeError, KeyError, ValueError) as e:
            self._broken(BadRequest(f"undecodable frame from the daemon: {e}"))

    def _broken(self, error: LTtxError) -> None:
        self.log.error("file connection: {error}; closing", error=error)
        self.error = error
        self.on_error(error)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        pending, self._pending = self._pending, {}
        error = self.error or ConnectionLost("the file connection to the daemon was lost")
        if self.error is None:
            self.error = error
        for d in pending.values():
            d.errback(error)
        self.on_error(error)
        self.lost.callback(None)


class _Progress:
    """A tqdm bar with the rate, or nothing."""

    def __init__(self, enabled: bool, name: str, total: int, initial: int) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True,
                            unit_divisor=1024, desc=name, leave=True)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Watchdog:
    """Abort a transfer that makes no progress for ``timeout`` seconds."""

    def __init__(self, reactor: Any, timeout: float, protocol: FileClientProtocol) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.protocol = protocol
        self.last = reactor.seconds()
        self.call = reactor.callLater(timeout, self._check)

    def touch(self) -> None:
        self.last = self.reactor.seconds()

    def _check(self) -> None:
        idle = self.reactor.seconds() - self.last
        if idle >= self.timeout:
            self.call = None
            error = TimeoutError(f"the file transfer made no progress for {self.timeout} s")
            if self.protocol.error is None:
                self.protocol.error = error
            self.protocol.transport.abortConnection()
        else:
            self.call = self.reactor.callLater(self.timeout - idle, self._check)

    def stop(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


@inlineCallbacks
def open_file_connection(reactor: Any, settings: "ConnectionSettings") -> Any:
    """Connect and authenticate a file connection; fires with its protocol."""
    protocol = FileClientProtocol(reactor, settings.timeout)
    try:
        yield connectProtocol(settings.endpoint(reactor), protocol)
    except Exception as e:  # noqa: BLE001 - every way of not connecting is a ConnectError
        raise ConnectError(f"cannot connect to LTtx at {settings.host}:{settings.port}: "
                           f"{e}") from None
    try:
        info = yield protocol.request("hello", *settings.hello_args(mode="file"))
    except BaseException:
        protocol.transport.loseConnection()
        raise
    protocol.max_frame = int(info.get("max_frame", protocol.max_frame))
    return protocol


def _close(protocol: FileClientProtocol) -> "Deferred[None]":
    if not protocol.lost.called:
        protocol.transport.loseConnection()
        return protocol.lost
    return succeed(None)


@inlineCallbacks
def send_file(reactor: Any, settings: "ConnectionSettings", path: str,
              name: Optional[str] = None, progress: bool = False,
              resume: bool = True, run_in_thread: Optional[RunInThread] = None) -> Any:
    """
    Upload ``path`` as ``name`` (its base name by default).

    With ``resume``, an interrupted upload of the same name continues from the
    byte the daemon holds, if those bytes are this file's.  Fires with
    ``{"name", "size", "md5"}``.

    :raises BadFileName: for a name the daemon refuses.
    :raises ChecksumMismatch: if the daemon received other bytes than were sent.
    :raises StorageError: over ``--max-file-size``, or the daemon's disk is full.
    :param run_in_thread: runs file hashing off the reactor thread (default: the
        reactor's thread pool).
    """
    name = os.path.basename(path) if name is None else name
    run = run_in_thread or pool_runner(reactor)
    file = open(path, "rb")
    protocol = None
    try:
        size = os.fstat(file.fileno()).st_size
        protocol = yield open_file_connection(reactor, settings)
        offset, prefix_md5, md5 = 0, None, hashlib.md5()
        if resume:
            partial = yield protocol.request("partial", name)
            if 0 < partial["offset"] <= size:
                offset = partial["offset"]
                md5, prefix_md5 = yield run(hash_file_prefix, path, offset)
        reply = yield protocol.request("upload", name, size, offset, prefix_md5,
                                       extra_time=offset / _SLOW_DISK)
        if reply["offset"] != offset:
            md5 = hashlib.md5()
        offset = reply["offset"]
        file.seek(offset)
        bar = _Progress(progress, name, size, offset)
        watchdog = _Watchdog(reactor, settings.timeout, protocol)

        sent = [offset]

        def frame(chunk: bytes) -> bytes:
            md5.update(chunk)
            bar.update(len(chunk))
            watchdog.touch()
            sent[0] += len(chunk)
            return PREFIX.pack(len(chunk)) + chunk

        sender = FileSender()
        sender.CHUNK_SIZE = min(FILE_CHUNK_SIZE, protocol.max_frame)
        protocol.on_error = lambda error: stop_sender(sender)
        try:
            if offset < size:
                # Exactly the size announced, even if the file grows meanwhile.
                yield sender.beginFileTransfer(_Limited(file, size - offset),
                                               protocol.transport, frame)
            if sent[0] != size:
                raise LTtxError(f"{path} shrank from {size} to {sent[0]} bytes while "
                                "being sent; nothing was stored")
            ours = md5.hexdigest()
            result = yield protocol.request("upload_end", ours,
                                            extra_time=(size - offset) / _SLOW_DISK)
        except LTtxError:
            raise
        except Exception:
            # FileSender stopped: the daemon's error, or the lost connection, says why.
            raise protocol.error or ConnectionLost("the upload was cut off") from None
        finally:
            watchdog.stop()
            bar.close()
        if result.get("md5") != ours:
            raise ChecksumMismatch(f"{name}: the daemon kept MD5 {result.get('md5')}, "
                                   f"the file has {ours}")
        return result
    finally:
        file.close()
        if protocol is not None:
            yield _close(protocol)


class _Limited:
    """A file's next ``left`` bytes, for a FileSender."""

    def __init__(self, file: Any, left: int) -> None:
        self.file = file
        self.left = left

    def read(self, size: int) -> bytes:
        data = self.file.read(min(size, self.left))
        self.left -= len(data)
        return bytes(data)


def _download_target(name: str, dest: str) -> str:
    if os.path.isdir(dest) or dest.endswith(("/", os.sep)):
        return os.path.join(dest, name)
    return dest


def _client_partial(target: str) -> str:
    """Where a download is written until verified: hidden, beside its target."""
    folder, base = os.path.split(target)
    tag = hashlib.md5(base.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return os.path.join(folder, f".lttx-{tag}.part")


@inlineCallbacks
def recv_file(reactor: Any, settings: "ConnectionSettings", name: str, dest: str = ".",
              progress: bool = False, resume: bool = True,
              run_in_thread: Optional[RunInThread] = None) -> Any:
    """
    Download ``name`` into the folder ``dest`` (or to the file path ``dest``).

    The file is written aside and renamed into place once its MD5 matches;
    with ``resume`` an interrupted download continues from the byte reached.
    Fires with ``{"name", "size", "md5", "path"}``.

    :raises NotFound: if the daemon has no such file (nothing is written).
    :raises BadFileName: for a name that is not a plain file name.
    :raises ChecksumMismatch: if the bytes received are not the daemon's file.
    :raises FileBusy: if another download to the same target is running.
    """
    check_file_name(name)
    if dest.endswith(("/", os.sep)):
        os.makedirs(dest, exist_ok=True)
    target = _download_target(name, dest)
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "no such folder to download into", folder)
    partial = _client_partial(target)
    run = run_in_thread or pool_runner(reactor)
    # Held (locked) from here to the rename: two downloads to one target, from
    # threads or processes, cannot write the same partial.
    file = _open_locked(partial, target)
    protocol = None
    writer: Optional[StreamWriter] = None
    watchdog = None
    bar = None
    replaced = False
    try:
        offset = os.fstat(file.fileno()).st_size if resume else 0
        prefix_md5, md5 = None, hashlib.md5()
        if offset:
            md5, prefix_md5 = yield run(hash_file_prefix, partial, offset)
        protocol = yield open_file_connection(reactor, settings)
        try:
            header = yield protocol.request("download", name, offset, prefix_md5,
                                            data_follows=True, extra_time=offset / _SLOW_DISK)
        except NotFound:
            unlink_quietly(partial)  # a partial of a file that is gone is of no use
            raise
        # No await between the reply and set_sink: raw frames may follow at once.
        size, start = header["size"], header["offset"]
        if start != offset:
            md5 = hashlib.md5()
        file.seek(start)
        file.truncate()
        bar = _Progress(progress, name, size, start)
        watchdog = _Watchdog(reactor, settings.timeout, protocol)
        done: Deferred[None] = Deferred()

        def write_failed(failure: Failure) -> None:
            assert protocol is not None
            protocol.error = (storage_error(failure.value, target)
                              if failure.check(OSError) else LTtxError(str(failure.value)))
            protocol.transport.loseConnection()

        writer = StreamWriter(file, md5, run, protocol, write_failed)
        left = [size - start]

        def received(chunk: bytes) -> None:
            assert writer is not None and bar is not None and watchdog is not None
            writer.write(chunk)
            bar.update(len(chunk))
            watchdog.touch()
            left[0] -= len(chunk)
            if left[0] == 0:
                done.callback(None)

        def broken(error: LTtxError) -> None:
            if not done.called:
                done.errback(error)

        protocol.on_error = broken
        if left[0] == 0:
            done.callback(None)
        protocol.set_sink(received)
        try:
            yield done
        except LTtxError:
            if writer.error is not None:
                unlink_quietly(partial)
            raise
        try:
            yield writer.drained()
            yield run(sync_file, file)
        except OSError as e:
            unlink_quietly(partial)
            raise storage_error(e, partial) from None
        ours = md5.hexdigest()
        try:
            yield protocol.request("download_end", ours)
        except ChecksumMismatch:
            unlink_quietly(partial)
            raise
        os.replace(partial, target)
        replaced = True
        return {"name": name, "size": size, "md5": ours, "path": target}
    finally:
        if watchdog is not None:
            watchdog.stop()
        if bar is not None:
            bar.close()
        if writer is not None:
            # Let queued writes finish (their error, if any, was reported) before
            # closing: the partial kept for a resume holds exactly what arrived.
            yield writer.drained().addErrback(lambda failure: None)
        if not replaced and not file.closed and os.fstat(file.fileno()).st_size == 0:
            unlink_quietly(partial)  # nothing arrived: nothing to resume from
        file.close()  # releases the lock
        if protocol is not None:
            yield _close(protocol)


def _open_locked(partial: str, target: str) -> Any:
    """Open (or create) a download's partial file and lock it, or refuse."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    file = os.fdopen(fd, "r+b")
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise FileBusy(f"another download to {target} is running") from None
    return file


@inlineCallbacks
def list_files(reactor: Any, settings: "ConnectionSettings") -> Any:
    """The daemon's files, by name: ``[{"name", "size", "mtime"}, ...]``."""
    protocol = yield open_file_connection(reactor, settings)
    try:
        return (yield protocol.request("list"))
    finally:
        yield _close(protocol)


@inlineCallbacks
def delete_file(reactor: Any, settings: "ConnectionSettings", name: str) -> Any:
    """Delete a stored file; fires with whether it existed."""
    protocol = yield open_file_connection(reactor, settings)
    try:
        return (yield protocol.request("delete", name))
    finally:
        yield _close(protocol)
