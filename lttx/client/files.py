"""
The client's file calls: upload, download, list and delete, each on a
connection of its own (``hello`` with ``{"mode": "file"}``), so a transfer
never holds up the other calls of a client.  The daemon's side is
:mod:`lttx.server.files`; the exchange is in ``docs/protocol.md`` ("File
transfer").

Uploads are sent with ``os.sendfile`` over plain TCP (hashed meanwhile in a
thread) or read by Twisted's :class:`FileSender` over TLS (hashed as they are
sent); downloads are written aside by a :class:`~lttx.diskio.StreamWriter`
(written and hashed in threads, pausing the connection while the disk lags),
and renamed into place only once their MD5 matches the daemon's.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import TYPE_CHECKING, Any, Optional

try:
    import fcntl
except ImportError:  # Windows: downloads to one target are not locked against each other
    fcntl = None  # type: ignore[assignment]

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from ..diskio import (
    RunInThread,
    StreamWriter,
    hash_file_prefix,
    hash_range,
    pool_runner,
    stop_sender,
    storage_error,
    sync_file,
    unlink_quietly,
)
from ..errors import ChecksumMismatch, ConnectionLost, FileBusy, LTtxError, NotFound, TimeoutError
from ..wire.frames import FILE_CHUNK_SIZE, PREFIX
from ..wire.names import check_file_name
from ..wire.sendfile import FileShrank, SendfileProducer, can_sendfile
from .connection import open_connection
from .protocol import FILE, ClientProtocol

if TYPE_CHECKING:
    from .settings import ConnectionSettings

#: Bytes per second a slow disk still hashes or syncs: how long the client
#: waits, beyond its timeout, for replies that hash a prefix or fsync a file.
_SLOW_DISK = 20 * 1024 * 1024


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

    def __init__(self, reactor: Any, timeout: float, protocol: ClientProtocol) -> None:
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
            self.protocol.fatal(TimeoutError(
                f"the file transfer made no progress for {self.timeout} s"), abort=True)
        else:
            self.call = self.reactor.callLater(self.timeout - idle, self._check)

    def stop(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


def _ask(protocol: ClientProtocol, settings: "ConnectionSettings", command: str, *args: Any,
         extra_time: float = 0.0, data_follows: bool = False) -> "Deferred[Any]":
    """
    One request of a file connection, answered within the client's timeout
    plus ``extra_time`` (for a reply that waits on hashing or syncing a big
    file), or the transfer fails with :class:`TimeoutError`.
    """
    return protocol.request(command, *args, timeout=settings.timeout + extra_time,
                            data_follows=data_follows)


def _close(protocol: ClientProtocol) -> "Deferred[None]":
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
        protocol = yield open_connection(reactor, settings, FILE)
        offset, prefix_md5, md5 = 0, None, hashlib.md5()
        if resume:
            partial = yield _ask(protocol, settings, "partial", name)
            if 0 < partial["offset"] <= size:
                offset = partial["offset"]
                md5, prefix_md5 = yield run(hash_file_prefix, path, offset)
        reply = yield _ask(protocol, settings, "upload", name, size, offset, prefix_md5,
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

        chunk = min(FILE_CHUNK_SIZE, protocol.max_frame)
        hashed: Optional[Deferred[str]] = None
        if can_sendfile(protocol.transport) and offset < size:
            # The kernel copies the file to the socket; the MD5 is made in a
            # thread meanwhile, from a descriptor of its own.
            hashed = run(hash_range, os.dup(file.fileno()), offset, size - offset, md5)

            def counted(data: int, wire: int) -> None:
                bar.update(data)
                watchdog.touch()

            sender: Any = SendfileProducer(protocol.transport, file.fileno(), offset,
                                           size - offset, chunk, counted)
        else:
            sender = FileSender()
            sender.CHUNK_SIZE = chunk
        protocol.on_error = lambda error: stop_sender(sender)
        try:
            if hashed is not None:
                try:
                    yield sender.start()
                except FileShrank:
                    raise LTtxError(f"{path} shrank below {size} bytes while being sent; "
                                    "nothing was stored") from None
                except BaseException:
                    hashed.addErrback(lambda failure: None)  # the send's error is the one
                    raise
                try:
                    ours = yield hashed
                except OSError as e:
                    raise LTtxError(f"cannot read {path}: {e}") from None
                sent[0] = size
            elif offset < size:
                # Exactly the size announced, even if the file grows meanwhile.
                yield sender.beginFileTransfer(_Limited(file, size - offset),
                                               protocol.transport, frame)
            if sent[0] != size:
                raise LTtxError(f"{path} shrank from {size} to {sent[0]} bytes while "
                                "being sent; nothing was stored")
            if hashed is None:
                ours = md5.hexdigest()
            result = yield _ask(protocol, settings, "upload_end", ours,
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


def partial_path(target: str) -> str:
    """Where a download to ``target`` is written until verified: hidden, beside
    its target; a later download to the same target (from any process)
    resumes from it."""
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
    partial = partial_path(target)
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
        protocol = yield open_connection(reactor, settings, FILE)
        try:
            header = yield _ask(protocol, settings, "download", name, offset, prefix_md5,
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
            protocol.fatal(storage_error(failure.value, target)
                           if failure.check(OSError) else LTtxError(str(failure.value)))

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
            yield _ask(protocol, settings, "download_end", ours)
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
    protocol = yield open_connection(reactor, settings, FILE)
    try:
        return (yield _ask(protocol, settings, "list"))
    finally:
        yield _close(protocol)


@inlineCallbacks
def delete_file(reactor: Any, settings: "ConnectionSettings", name: str) -> Any:
    """Delete a stored file; fires with whether it existed."""
    protocol = yield open_connection(reactor, settings, FILE)
    try:
        return (yield _ask(protocol, settings, "delete", name))
    finally:
        yield _close(protocol)
