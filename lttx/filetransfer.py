"""
File transfer: upload, download, list and delete, on a connection of its own.

A client opens a connection, authenticates with ``hello`` carrying the option
``{"mode": "file"}``, and from then on :class:`LTtxServerProtocol` hands every
frame of that connection to a :class:`FileSession`.  Requests and replies keep
the usual MessagePack frames; file data travels in *raw* frames (the 4-byte
length prefix, then the bytes as they are) whose count both ends know from the
size announced before, so no byte is copied into a MessagePack envelope.  The
exact exchange is in ``docs/protocol.md`` ("File transfer").

The daemon stores files in one flat folder (``<data-dir>/files/``).  An upload
is written to ``.partial/<name>`` in that folder, hashed as it arrives, and
renamed into place only once the client's MD5 matches; a partial left by an
interrupted upload stays there (hidden: names may not start with a dot) so the
upload can be resumed from the byte reached.  Only one upload of a name runs at
a time (:class:`FileBusy` for the second).

Neither end holds a file in memory: the sending side is Twisted's
:class:`FileSender`, a pull producer driven by the socket; the receiving side
(:class:`StreamWriter`) writes chunks in a thread as they arrive and pauses the
transport while more than a few MiB wait to be written.

The client side (:func:`send_file`, :func:`recv_file`, :func:`list_files`,
:func:`delete_file`) opens one connection per call from a
:class:`~lttx.client.ConnectionSettings`, so a transfer never holds up the
other calls of a client.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import os
import struct
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

try:
    import fcntl
except ImportError:  # Windows: downloads to one target are not locked against each other
    fcntl = None  # type: ignore[assignment]

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    fail,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import connectProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.basic import FileSender, Int32StringReceiver
from twisted.python.failure import Failure

from . import codec
from .errors import (
    BadFileName,
    BadRequest,
    ChecksumMismatch,
    ConnectError,
    ConnectionLost,
    FileBusy,
    LTtxError,
    NotFound,
    ServerError,
    StorageError,
    TimeoutError,
)
from .journal import fsync_directory
from .replies import settle

if TYPE_CHECKING:
    from .client import ConnectionSettings
    from .protocol import LTtxServerProtocol

#: Bytes of file data per raw frame (and per read of the sending side).
CHUNK_SIZE = 256 * 1024
#: The receiving side pauses its transport while more than this waits to be written...
WRITE_HIGH_WATER = 8 * 1024 * 1024
#: ... and resumes once the backlog is down to this.
WRITE_LOW_WATER = 2 * 1024 * 1024
#: Bytes read from the socket at once on a file connection.
READ_SIZE = 1024 * 1024
#: The hidden folder, inside the files folder, holding uploads in progress.
PARTIAL_DIR = ".partial"
#: A partial upload left untouched this long is removed when the daemon starts.
PARTIAL_MAX_AGE = 7 * 24 * 3600
#: The longest file name, in UTF-8 bytes (NAME_MAX of common file systems).
MAX_NAME_BYTES = 255

_PREFIX = struct.Struct("!I")
#: Bytes per second a slow disk still hashes or syncs: how long the client
#: waits, beyond its timeout, for replies that hash a prefix or fsync a file.
_SLOW_DISK = 20 * 1024 * 1024
_HASH_BLOCK = 1024 * 1024

RunInThread = Callable[..., "Deferred[Any]"]


# -- names -------------------------------------------------------------------

def check_name(name: object) -> str:
    """
    Return ``name`` if it is a plain file name, else refuse it.

    :raises BadFileName: for a non-string, an empty name, a path separator,
        ``..``, a NUL, a leading dot, or more than 255 UTF-8 bytes.
    """
    if not isinstance(name, str):
        raise BadFileName(f"a file name must be a string, not {type(name).__name__}")
    if not name:
        raise BadFileName("a file name must not be empty")
    shown = repr(name[:60])
    if "\x00" in name:
        raise BadFileName(f"file name {shown} holds a NUL")
    if "/" in name or "\\" in name:
        raise BadFileName(f"file name {shown} holds a path separator")
    if name == "..":
        raise BadFileName("file name '..' is not a file")
    if name.startswith("."):
        raise BadFileName(f"file name {shown} starts with a dot")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadFileName(f"file name {shown} is not valid Unicode") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise BadFileName(
            f"file name of {len(encoded)} bytes is longer than {MAX_NAME_BYTES} bytes")
    return name


def thread_runner(reactor: Any) -> RunInThread:
    """``run(f, *args)`` -> a Deferred of ``f(*args)`` run in the reactor's thread pool."""
    return lambda f, *args: deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


def synchronous_runner(f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
    """A :data:`RunInThread` that runs ``f`` at once (tests, tiny files)."""
    return maybeDeferred(f, *args)


def _storage_error(error: Optional[BaseException], what: str) -> StorageError:
    """The StorageError a failed write (an OSError, normally) stands for."""
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"disk full: no space left to write {what}")
    if code == errno.EFBIG:
        return StorageError(f"{what} is larger than the file system allows")
    return StorageError(f"cannot write {what}: {getattr(error, 'strerror', None) or error}")


def _hash_prefix(file: Any, length: int, md5: Any) -> str:
    """Feed the first ``length`` bytes of an open file to ``md5``; its hex digest."""
    file.seek(0)
    left = length
    while left > 0:
        block = file.read(min(_HASH_BLOCK, left))
        if not block:
            break
        md5.update(block)
        left -= len(block)
    return str(md5.hexdigest())


def hash_file_prefix(path: str, length: int) -> tuple[Any, str]:
    """The MD5 object and hex digest of the first ``length`` bytes of ``path``."""
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        digest = _hash_prefix(f, length, md5)
    return md5, digest


def _write_chunks(file: Any, md5: Any, chunks: list[bytes]) -> None:
    # Runs in a thread: hashlib and file writes release the GIL on big buffers.
    for chunk in chunks:
        md5.update(chunk)
        file.write(chunk)


def _read_big(transport: Any) -> None:
    """Read up to 1 MiB per recv on a file connection instead of Twisted's 64 KiB:
    far fewer calls, and far less re-joining of partial frames by the receiver."""
    if isinstance(getattr(transport, "bufferSize", None), int):
        transport.bufferSize = READ_SIZE


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # already gone: what we wanted
        os.unlink(path)


# -- the receiving side ------------------------------------------------------

class StreamWriter:
    """
    Write chunks to a file in order, in a thread, hashing them as they go.

    While more than ``high`` bytes wait to be written, ``producer`` (the
    receiving protocol) is paused, so a fast sender and a slow disk cannot make
    the receiver's memory grow; it is resumed at ``low``.  The first write
    error is kept; ``on_error`` is told of it and later chunks are dropped.
    """

    def __init__(self, file: Any, md5: Any, run_in_thread: RunInThread, producer: Any,
                 on_error: Callable[[Failure], None],
                 high: int = WRITE_HIGH_WATER, low: int = WRITE_LOW_WATER) -> None:
        self.file = file
        self.md5 = md5
        self._run = run_in_thread
        self._producer = producer
        self._on_error = on_error
        self._high = high
        self._low = low
        self._queue: list[bytes] = []
        self.queued = 0
        self._busy = False
        self.paused = False
        self.error: Optional[Failure] = None
        self._waiters: list[Deferred[None]] = []

    def write(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        self._queue.append(chunk)
        self.queued += len(chunk)
        if not self._busy:
            self._next()
        if self.queued > self._high and not self.paused:
            self.paused = True
            self._producer.pauseProducing()

    def _next(self) -> None:
        chunks, self._queue = self._queue, []
        self._busy = True
        d = self._run(_write_chunks, self.file, self.md5, chunks)
        d.addCallbacks(self._written, self._failed,
                       callbackArgs=(sum(len(c) for c in chunks),))

    def _written(self, _: Any, length: int) -> None:
        self._busy = False
        self.queued -= length
        if self._queue:
            self._next()
        if self.paused and self.queued <= self._low:
            self.paused = False
            self._producer.resumeProducing()
        if not self._busy:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._busy = False
        self._queue = []
        self.queued = 0
        self.error = failure
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)
        self._on_error(failure)

    def drained(self) -> "Deferred[None]":
        """Fires once every chunk given so far is written (fails with the write error)."""
        if self.error is not None:
            return fail(self.error)
        if not self._busy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d


# -- the daemon --------------------------------------------------------------

class FileService(Service):
    """
    The daemon's files: the folder, the size limit, the uploads in flight.

    :param directory: the files folder (``<data-dir>/files``); created at start.
    :param run_in_thread: runs blocking file work off the reactor thread
        (:func:`thread_runner`).
    :param max_file_size: the largest accepted upload in bytes; 0 for no limit.
    """

    log = Logger()

    def __init__(self, directory: str, run_in_thread: RunInThread,
                 max_file_size: int = 0) -> None:
        self.directory = os.path.abspath(directory)
        self.partial_directory = os.path.join(self.directory, PARTIAL_DIR)
        self.run_in_thread = run_in_thread
        self.max_file_size = max_file_size
        self.uploading: set[str] = set()
        self.sessions: set[FileSession] = set()

    def startService(self) -> None:
        os.makedirs(self.partial_directory, exist_ok=True)
        self.remove_stale_partials(time.time())
        super().startService()

    def stopService(self) -> "Deferred[Any]":
        """
        The daemon stops (SIGTERM): uploads in flight are discarded, as the spec
        says; twistd waits for the returned Deferred, so their partials are gone
        before it exits.
        """
        super().stopService()
        return gatherResults([session.stop("the daemon is stopping")
                              for session in list(self.sessions)])

    def remove_stale_partials(self, now: float, max_age: float = PARTIAL_MAX_AGE) -> int:
        """Remove partial uploads untouched for ``max_age`` seconds; how many went."""
        removed = 0
        with os.scandir(self.partial_directory) as entries:
            for entry in entries:
                if entry.name in self.uploading or not entry.is_file(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                    _unlink_quietly(entry.path)
                    removed += 1
        if removed:
            self.log.info("removed {count} partial uploads older than {days:.0f} days",
                          count=removed, days=max_age / 86400)
        return removed

    def session(self, protocol: "LTtxServerProtocol") -> "FileSession":
        """The file-transfer session of one authenticated connection."""
        os.makedirs(self.partial_directory, exist_ok=True)
        return FileSession(self, protocol)

    def path_of(self, name: object) -> str:
        return os.path.join(self.directory, check_name(name))

    def partial_path_of(self, name: str) -> str:
        return os.path.join(self.partial_directory, check_name(name))

    def check_size(self, size: int) -> None:
        """:raises StorageError: if a file of ``size`` bytes is not accepted."""
        if self.max_file_size and size > self.max_file_size:
            raise StorageError(f"a file of {size} bytes is over the daemon's "
                               f"--max-file-size of {self.max_file_size} bytes")
        free = os.statvfs(self.directory)
        available = free.f_bavail * free.f_frsize
        if size > available:
            raise StorageError(f"disk full: {size} bytes do not fit in the "
                               f"{available} bytes left")

    def list(self) -> list[dict[str, Any]]:
        """The stored files, by name: ``{"name", "size", "mtime"}`` each."""
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
                found.append({"name": entry.name, "size": info.st_size,
                              "mtime": info.st_mtime})
        return sorted(found, key=lambda f: f["name"])

    def delete(self, name: object) -> bool:
        """Delete a stored file; whether it existed."""
        path = self.path_of(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            return False
        return True

    def status(self) -> dict[str, Any]:
        """What ``lttx status`` shows of the files."""
        files = self.list()
        return {
            "files": len(files),
            "bytes": sum(f["size"] for f in files),
            "uploads": sum(1 for s in self.sessions if s.upload is not None),
            "downloads": sum(1 for s in self.sessions if s.download is not None),
            "partials": len(os.listdir(self.partial_directory)),
        }


class _Upload:
    def __init__(self, name: str, size: int, offset: int, partial: str) -> None:
        self.name = name
        self.size = size
        self.offset = offset
        self.received = offset
        self.partial = partial
        self.writer: Optional[StreamWriter] = None
        self.ending = False
        self.started = time.monotonic()


class _Download:
    def __init__(self, name: str, size: int, offset: int, file: Any, md5: Any) -> None:
        self.name = name
        self.size = size
        self.offset = offset
        self.file = file
        self.md5 = md5
        self.sender: Optional[FileSender] = None
        self.sent = False
        self.started = time.monotonic()


_REPLIED = object()  # a handler that sent its reply itself


class FileSession:
    """
    The file-transfer side of one connection (``hello`` with mode ``file``).

    It holds that connection's transfer (one at a time) and answers the
    requests of the "File transfer" section of ``docs/protocol.md``.
    """

    log = Logger()

    def __init__(self, service: FileService, protocol: "LTtxServerProtocol") -> None:
        self.service = service
        self.protocol = protocol
        self.peer = protocol.peer
        self.upload: Optional[_Upload] = None
        self.download: Optional[_Download] = None
        self.opening_download = False
        self.closed = False
        service.sessions.add(self)
        _read_big(protocol.transport)

    # -- frames ---------------------------------------------------------------

    def frame_received(self, frame: bytes) -> None:
        if self.closed:
            return
        upload = self.upload
        if upload is not None and upload.writer is not None and upload.received < upload.size:
            self._upload_data(upload, frame)
            return
        if self.download is not None and not self.download.sent:
            self._fatal(None, BadRequest("no request may be sent while a download streams"))
            return
        try:
            message = codec.decode(frame)
        except BadRequest as e:
            self._refuse(None, "frame", e)
            return
        if (not isinstance(message, list) or len(message) != 4
                or message[0] != codec.REQUEST or type(message[1]) is not int
                or not isinstance(message[3], list)):
            self._refuse(None, "frame", BadRequest(
                "a file connection takes request frames [0, id, command, args]"))
            return
        _, request_id, name, args = message
        handler = getattr(self, f"cmd_{name}", None) if isinstance(name, str) else None
        if handler is None:
            self._refuse(request_id, name, BadRequest(f"unknown file command {name!r:.40}"))
            return
        try:
            inspect.signature(handler).bind(request_id, *args)
        except TypeError:
            self._refuse(request_id, name, BadRequest(
                f"wrong number of arguments for {name}: {len(args)}"))
            return
        try:
            result = handler(request_id, *args)
        except LTtxError as e:
            self._refuse(request_id, name, e)
            return
        except Exception:
            # A bug or an unforeseen OS error: say so, keep serving.
            self.log.failure("{peer}: file {command} failed", peer=self.peer, command=name)
            self._refuse(request_id, name, ServerError(f"{name} failed in the daemon"))
            return
        if isinstance(result, Deferred):
            result.addCallbacks(lambda value: self._reply(request_id, value),
                                lambda failure: self._failed(request_id, name, failure))
        else:
            self._reply(request_id, result)

    def _reply(self, request_id: int, value: Any) -> None:
        if value is not _REPLIED and not self.closed:
            self.protocol.send_reply(request_id, value)

    def _failed(self, request_id: int, name: str, failure: Failure) -> None:
        if failure.check(LTtxError):
            self._refuse(request_id, name, cast(LTtxError, failure.value))
        else:
            self.log.failure("{peer}: file {command} failed", failure, peer=self.peer,
                             command=name)
            self._refuse(request_id, name, ServerError(f"{name} failed in the daemon"))

    def _refuse(self, request_id: Optional[int], command: Any, error: LTtxError) -> None:
        self.log.info("{peer}: file {command!r:.40} refused: {code}: {message}",
                      peer=self.peer, command=command, code=error.code, message=error.message)
        if not self.closed:
            self.protocol.send_error(request_id, error)

    def _fatal(self, request_id: Optional[int], error: LTtxError) -> None:
        """Send an error and close; :meth:`connection_lost` ends what is left."""
        self._refuse(request_id, "transfer", error)
        self.protocol.transport.loseConnection()
        self.closed = True

    def connection_lost(self) -> None:
        """The connection is gone: end its transfer (a partial upload is kept for resume)."""
        upload, download = self.upload, self.download
        self._close()
        if upload is not None and not upload.ending:
            # (An upload whose upload_end is pending is finished by that chain.)
            def interrupted() -> None:
                # Logged once the partial is written and closed, so a resume can start.
                self.log.info(
                    "{peer}: upload of {name} interrupted at {received} of {size} bytes "
                    "(kept for resume)", peer=self.peer, name=upload.name,
                    received=upload.received, size=upload.size)
            self._end_upload(upload, keep=True, then=interrupted)
        if download is not None:
            if download.sender is not None:
                _stop_sender(download.sender)
            if not download.sent:
                self.log.info("{peer}: download of {name} interrupted", peer=self.peer,
                              name=download.name)
            download.file.close()

    def stop(self, reason: str) -> "Deferred[None]":
        """Discard an upload in flight (its partial too) and close the connection."""
        upload = self.upload
        stopped: Deferred[None] = succeed(None)
        if upload is not None and not upload.ending:
            self.log.info("{peer}: upload of {name} discarded at {received} of {size} "
                          "bytes: {reason}", peer=self.peer, name=upload.name,
                          received=upload.received, size=upload.size, reason=reason)
            stopped = Deferred()
            self.upload = None
            self._end_upload(upload, keep=False, then=lambda: stopped.callback(None))
        self.closed = True
        self.protocol.transport.loseConnection()
        return stopped

    def _close(self) -> None:
        self.closed = True
        self.upload = None
        self.download = None
        self.service.sessions.discard(self)

    def _busy(self) -> None:
        if self.upload is not None or self.download is not None or self.opening_download:
            raise BadRequest("one transfer at a time on a file connection")

    # -- list and delete -----------------------------------------------------

    def cmd_list(self, request_id: int) -> list[dict[str, Any]]:
        self.protocol.authorize("download")
        grant = self.protocol.grant
        # A token sees only the files it may download.
        return [f for f in self.service.list() if grant.allows("download", f["name"])]

    def cmd_delete(self, request_id: int, name: Any) -> bool:
        self.protocol.authorize("upload", name)
        try:
            deleted = self.service.delete(name)
        except OSError as e:
            raise StorageError(f"cannot delete {name}: {e.strerror or e}") from None
        if deleted:
            self.log.info("{peer} deleted file {name}", peer=self.peer, name=name)
        return deleted

    # -- upload ----------------------------------------------------------------

    def cmd_partial(self, request_id: int, name: Any) -> dict[str, int]:
        """How many bytes of an interrupted upload of ``name`` the daemon holds."""
        name = check_name(name)
        self.protocol.authorize("upload", name)
        if name in self.service.uploading:
            raise FileBusy(f"{name} is being uploaded by another connection")
        try:
            size = os.stat(self.service.partial_path_of(name)).st_size
        except FileNotFoundError:
            size = 0
        return {"offset": size}

    def cmd_upload(self, request_id: int, name: Any, size: Any, offset: Any = 0,
                   prefix_md5: Any = None) -> "Deferred[dict[str, int]]":
        name = check_name(name)
        self.protocol.authorize("upload", name)
        if type(size) is not int or size < 0:
            raise BadRequest("upload size must be a non-negative int")
        if type(offset) is not int or not 0 <= offset <= size:
            raise BadRequest("upload offset must be an int between 0 and the size")
        if prefix_md5 is not None and not isinstance(prefix_md5, str):
            raise BadRequest("upload prefix_md5 must be a hex string or nil")
        self._busy()
        self.service.check_size(size)
        if name in self.service.uploading:
            raise FileBusy(f"{name} is being uploaded by another connection")
        self.service.uploading.add(name)
        upload = _Upload(name, size, offset, self.service.partial_path_of(name))
        self.upload = upload
        d = self.service.run_in_thread(_open_partial, upload.partial, offset, prefix_md5)
        d.addCallbacks(lambda opened: self._upload_opened(upload, *opened),
                       lambda failure: self._upload_open_failed(upload, failure))
        return d

    def _upload_opened(self, upload: _Upload, file: Any, md5: Any,
                       offset: int) -> dict[str, int]:
        if self.upload is not upload:  # the connection went while the file opened
            file.close()
            self.service.uploading.discard(upload.name)
            return {"offset": offset}
        upload.offset = upload.received = offset
        upload.writer = StreamWriter(file, md5, self.service.run_in_thread, self.protocol,
                                     lambda failure: self._write_failed(upload, failure))
        self.log.info("{peer}: upload of {name} started at byte {offset} of {size}",
                      peer=self.peer, name=upload.name, offset=offset, size=upload.size)
        return {"offset": offset}

    def _upload_open_failed(self, upload: _Upload, failure: Failure) -> Failure:
        self.service.uploading.discard(upload.name)
        if self.upload is upload:
            self.upload = None
        if failure.check(OSError):
            return Failure(_storage_error(failure.value, upload.name))
        return failure

    def _upload_data(self, upload: _Upload, chunk: bytes) -> None:
        assert upload.writer is not None
        if upload.received + len(chunk) > upload.size:
            self._discard(upload)
            self._fatal(None, BadRequest(
                f"more data than the {upload.size} bytes announced for {upload.name}"))
            return
        upload.received += len(chunk)
        upload.writer.write(chunk)

    def _write_failed(self, upload: _Upload, failure: Failure) -> None:
        if upload.ending:
            return  # upload_end is waiting on the writer and reports it
        error = (_storage_error(failure.value, upload.name) if failure.check(OSError)
                 else ServerError(f"writing {upload.name} failed in the daemon"))
        if not failure.check(OSError):
            self.log.failure("{peer}: writing {name} failed", failure, peer=self.peer,
                             name=upload.name)
        current = self.upload is upload
        self._discard(upload)
        if current:
            self._fatal(None, error)

    def cmd_upload_end(self, request_id: int, md5_hex: Any) -> "Deferred[Any]":
        upload = self.upload
        if upload is None or upload.writer is None or upload.received < upload.size:
            raise BadRequest("upload_end comes after all the data of an upload")
        if upload.ending:
            raise BadRequest("upload_end was already sent")
        upload.ending = True
        writer = upload.writer
        d = writer.drained()
        d.addCallback(lambda _: self.service.run_in_thread(_sync_and_close, writer.file))
        d.addCallback(lambda _: self._check_upload(upload, md5_hex))
        d.addErrback(lambda failure: self._upload_end_failed(upload, failure))
        return d

    def _check_upload(self, upload: _Upload, md5_hex: Any) -> "Deferred[dict[str, Any]]":
        assert upload.writer is not None
        ours = upload.writer.md5.hexdigest()
        if ours != md5_hex:
            raise ChecksumMismatch(
                f"{upload.name}: the daemon received MD5 {ours}, the client sent "
                f"{str(md5_hex)[:40]}; the file was not kept")
        # Renamed into place and the folder synced, off the reactor: once the
        # client hears of success, the file is there even after a power loss.
        d = self.service.run_in_thread(_move_into_place, upload.partial,
                                       self.service.path_of(upload.name))
        return d.addCallback(lambda _: self._upload_kept(upload, ours))

    def _upload_kept(self, upload: _Upload, ours: str) -> dict[str, Any]:
        seconds = time.monotonic() - upload.started
        self._end_upload(upload, keep=True)
        if self.upload is upload:
            self.upload = None
        self.log.info(
            "{peer}: upload of {name} finished: {size} bytes, md5 {md5}, "
            "{mib_s:.1f} MiB/s", peer=self.peer, name=upload.name, size=upload.size,
            md5=ours, mib_s=(upload.size - upload.offset) / 2**20 / max(seconds, 1e-6))
        return {"name": upload.name, "size": upload.size, "md5": ours}

    def _upload_end_failed(self, upload: _Upload, failure: Failure) -> Failure:
        self._discard(upload)
        if failure.check(OSError):
            return Failure(_storage_error(failure.value, upload.name))
        return failure

    def _discard(self, upload: _Upload) -> None:
        """Drop an upload that cannot be kept: its partial file goes."""
        self._end_upload(upload, keep=False)
        if self.upload is upload:
            self.upload = None

    def _end_upload(self, upload: _Upload, keep: bool,
                    then: Callable[[], None] = lambda: None) -> None:
        """Close the upload's file once its writes are done; free its name."""
        def done(_: Any) -> None:
            if upload.writer is not None and not upload.writer.file.closed:
                upload.writer.file.close()
            if not keep:
                _unlink_quietly(upload.partial)
            self.service.uploading.discard(upload.name)
            then()

        if upload.writer is None:
            # Still opening: the open callback closes the file and frees the name.
            then()
            return
        upload.writer.drained().addBoth(done)

    # -- download --------------------------------------------------------------

    def cmd_download(self, request_id: int, name: Any, offset: Any = 0,
                     prefix_md5: Any = None) -> "Deferred[object]":
        name = check_name(name)
        self.protocol.authorize("download", name)
        if type(offset) is not int or offset < 0:
            raise BadRequest("download offset must be a non-negative int")
        if prefix_md5 is not None and not isinstance(prefix_md5, str):
            raise BadRequest("download prefix_md5 must be a hex string or nil")
        self._busy()
        path = self.service.path_of(name)
        self.opening_download = True
        d = self.service.run_in_thread(_open_for_download, path, offset, prefix_md5)
        d.addBoth(self._download_opened)
        d.addCallbacks(lambda opened: self._start_download(request_id, name, *opened),
                       lambda failure: self._download_open_failed(name, failure))
        return d

    def _download_opened(self, result: Any) -> Any:
        self.opening_download = False
        return result

    def _download_open_failed(self, name: str, failure: Failure) -> Failure:
        if failure.check(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return Failure(NotFound(f"no file named {name}"))
        if failure.check(OSError):
            return Failure(StorageError(
                f"cannot read {name}: {getattr(failure.value, 'strerror', failure.value)}"))
        return failure

    def _start_download(self, request_id: int, name: str, file: Any, size: int,
                        md5: Any, offset: int) -> object:
        if self.closed:
            file.close()
            return _REPLIED
        download = _Download(name, size, offset, file, md5)
        self.download = download
        self.log.info("{peer}: download of {name} started at byte {offset} of {size}",
                      peer=self.peer, name=name, offset=offset, size=size)
        self.protocol.send_reply(request_id, {"name": name, "size": size, "offset": offset})
        file.seek(offset)
        sender = FileSender()
        sender.CHUNK_SIZE = CHUNK_SIZE
        download.sender = sender

        def frame(chunk: bytes) -> bytes:
            download.md5.update(chunk)
            return _PREFIX.pack(len(chunk)) + chunk

        sent = sender.beginFileTransfer(file, self.protocol.transport, frame)
        sent.addCallbacks(lambda _: self._download_sent(download),
                          lambda failure: None)  # stopped: connection_lost logged it
        return _REPLIED

    def _download_sent(self, download: _Download) -> None:
        download.sent = True
        download.sender = None
        download.file.close()

    def cmd_download_end(self, request_id: int, md5_hex: Any) -> dict[str, str]:
        download = self.download
        if download is None or not download.sent:
            raise BadRequest("download_end comes after all the data of a download")
        self.download = None
        ours = download.md5.hexdigest()
        if ours != md5_hex:
            raise ChecksumMismatch(
                f"{download.name}: the daemon sent MD5 {ours}, the client computed "
                f"{str(md5_hex)[:40]}")
        seconds = time.monotonic() - download.started
        self.log.info(
            "{peer}: download of {name} finished: {size} bytes, md5 {md5}, "
            "{mib_s:.1f} MiB/s", peer=self.peer, name=download.name, size=download.size,
            md5=ours, mib_s=(download.size - download.offset) / 2**20 / max(seconds, 1e-6))
        return {"md5": ours}


def _open_partial(path: str, offset: int, prefix_md5: Optional[str]) -> tuple[Any, Any, int]:
    """
    Open the partial file of an upload (in a thread).

    It resumes at ``offset`` only if the partial holds that many bytes and
    their MD5 is the client's ``prefix_md5``; otherwise it starts afresh.
    """
    if offset > 0 and prefix_md5:
        try:
            f = open(path, "r+b")
        except FileNotFoundError:
            f = None
        if f is not None:
            md5 = hashlib.md5()
            if os.fstat(f.fileno()).st_size >= offset and \
                    _hash_prefix(f, offset, md5) == prefix_md5:
                f.seek(offset)
                f.truncate()
                return f, md5, offset
            f.close()
    return open(path, "wb"), hashlib.md5(), 0


def _open_for_download(path: str, offset: int,
                       prefix_md5: Optional[str]) -> tuple[Any, int, Any, int]:
    """Open a stored file (in a thread); resume at ``offset`` if the prefixes agree."""
    f = open(path, "rb")
    try:
        size = os.fstat(f.fileno()).st_size
        md5 = hashlib.md5()
        if 0 < offset <= size and prefix_md5 and _hash_prefix(f, offset, md5) == prefix_md5:
            return f, size, md5, offset
        return f, size, hashlib.md5(), 0
    except BaseException:
        f.close()
        raise


def _move_into_place(partial: str, path: str) -> None:
    os.replace(partial, path)
    fsync_directory(os.path.dirname(path))


def _sync_and_close(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


# -- the client ----------------------------------------------------------------

class FileClientProtocol(Int32StringReceiver):
    """The client's side of a file connection: requests, replies, raw data in."""

    log = Logger()

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.MAX_LENGTH = 2**31
        self.reactor = reactor
        self.timeout = timeout
        self.max_frame = CHUNK_SIZE  # the daemon's limit, once hello tells it
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
        _read_big(self.transport)

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
    run = run_in_thread or thread_runner(reactor)
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
            return _PREFIX.pack(len(chunk)) + chunk

        sender = FileSender()
        sender.CHUNK_SIZE = min(CHUNK_SIZE, protocol.max_frame)
        protocol.on_error = lambda error: _stop_sender(sender)
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


def _stop_sender(sender: FileSender) -> None:
    """Stop a FileSender for good: stopProducing alone lets the transport pull
    the rest of the file."""
    sender.stopProducing()
    sender.file = None


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
    check_name(name)
    if dest.endswith(("/", os.sep)):
        os.makedirs(dest, exist_ok=True)
    target = _download_target(name, dest)
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "no such folder to download into", folder)
    partial = _client_partial(target)
    run = run_in_thread or thread_runner(reactor)
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
            _unlink_quietly(partial)  # a partial of a file that is gone is of no use
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
            protocol.error = (_storage_error(failure.value, target)
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
                _unlink_quietly(partial)
            raise
        try:
            yield writer.drained()
            yield run(_sync, file)
        except OSError as e:
            _unlink_quietly(partial)
            raise _storage_error(e, partial) from None
        ours = md5.hexdigest()
        try:
            yield protocol.request("download_end", ours)
        except ChecksumMismatch:
            _unlink_quietly(partial)
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
            _unlink_quietly(partial)  # nothing arrived: nothing to resume from
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


def _sync(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())


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
