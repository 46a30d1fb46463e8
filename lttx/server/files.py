"""
The daemon's files: upload, download, list and delete, on a connection of its own.

A client opens a connection, authenticates with ``hello`` carrying the option
``{"mode": "file"}``, and from then on the connection's frames go to a
:class:`FileSession`.  Requests and replies keep the usual MessagePack frames;
file data travels in *raw* frames (the 4-byte length prefix, then the bytes as
they are) whose count both ends know from the size announced before, so no
byte is copied into a MessagePack envelope.  The exact exchange is in
``docs/protocol.md`` ("File transfer"); the client's side is
:mod:`lttx.client.files`.

The daemon stores files in one flat folder (``<data-dir>/files/``).  An upload
is written to ``.partial/<name>`` in that folder, hashed as it arrives, and
renamed into place only once the client's MD5 matches; a partial left by an
interrupted upload stays there (hidden: names may not start with a dot) so the
upload can be resumed from the byte reached.  Only one upload of a name runs at
a time (:class:`FileBusy` for the second).

Neither end holds a file in memory: the sending side is Twisted's
:class:`FileSender`, a pull producer driven by the socket; the receiving side
(:class:`~lttx.diskio.StreamWriter`) writes chunks in a thread as they arrive
and pauses the transport while more than a few MiB wait to be written.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from ..diskio import (
    RunInThread,
    StreamWriter,
    fsync_directory,
    hash_prefix,
    read_big,
    stop_sender,
    storage_error,
    sync_file,
    unlink_quietly,
)
from ..errors import (
    BadRequest,
    ChecksumMismatch,
    FileBusy,
    LTtxError,
    NotFound,
    ServerError,
    StorageError,
)
from ..wire import codec
from ..wire.frames import FILE_CHUNK_SIZE, PREFIX
from ..wire.names import check_file_name

if TYPE_CHECKING:
    from .protocol import LTtxServerProtocol

#: The hidden folder, inside the files folder, holding uploads in progress.
PARTIAL_DIR = ".partial"
#: A partial upload left untouched this long is removed when the daemon starts.
PARTIAL_MAX_AGE = 7 * 24 * 3600


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
                    unlink_quietly(entry.path)
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
        return os.path.join(self.directory, check_file_name(name))

    def partial_path_of(self, name: str) -> str:
        return os.path.join(self.partial_directory, check_file_name(name))

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
        read_big(protocol.transport)

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
                stop_sender(download.sender)
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
        name = check_file_name(name)
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
        name = check_file_name(name)
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
            return Failure(storage_error(failure.value, upload.name))
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
        error = (storage_error(failure.value, upload.name) if failure.check(OSError)
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
            return Failure(storage_error(failure.value, upload.name))
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
                unlink_quietly(upload.partial)
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
        name = check_file_name(name)
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
        sender.CHUNK_SIZE = FILE_CHUNK_SIZE
        download.sender = sender

        def frame(chunk: bytes) -> bytes:
            download.md5.update(chunk)
            return PREFIX.pack(len(chunk)) + chunk

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
                    hash_prefix(f, offset, md5) == prefix_md5:
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
        if 0 < offset <= size and prefix_md5 and hash_prefix(f, offset, md5) == prefix_md5:
            return f, size, md5, offset
        return f, size, hashlib.md5(), 0
    except BaseException:
        f.close()
        raise


def _move_into_place(partial: str, path: str) -> None:
    os.replace(partial, path)
    fsync_directory(os.path.dirname(path))


def _sync_and_close(file: Any) -> None:
    sync_file(file)
    file.close()
