"""
One file connection's transfer: :class:`FileSession`.

A client opens a connection, authenticates with ``hello`` carrying the option
``{"mode": "file"}``, and from then on the connection's frames go to a
:class:`FileSession`, which holds that connection's transfer (one at a time)
and serves its requests through the daemon's one
:class:`~lttx.server.dispatch.Dispatcher` (rights from
:data:`lttx.state.auth.FILE_COMMAND_RIGHTS`).  Requests and replies keep the
usual MessagePack frames; file data travels in *raw* frames (the 4-byte length
prefix, then the bytes as they are) whose count both ends know from the size
announced before, so no byte is copied into a MessagePack envelope.  The exact
exchange is in ``docs/protocol.md`` ("File transfer"); the folder and its
rules are the :class:`~lttx.server.files.FileService`'s.

Neither end holds a file in memory: the sending side is a pull producer driven
by the socket (:class:`~lttx.wire.sendfile.SendfileProducer` over plain TCP,
Twisted's :class:`FileSender` over TLS); the receiving side
(:class:`~lttx.diskio.StreamWriter`) writes and hashes chunks in threads as
they arrive and pauses the connection while more than a few MiB wait.  A
download of a file unchanged since its upload is checked against the MD5 its
upload recorded (:func:`~lttx.server.file_disk.recorded_digest`), not hashed
again.

A session needs of its connection only :class:`IFileConnection`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from ..diskio import (
    StreamWriter,
    hash_range,
    read_big,
    stop_sender,
    storage_error,
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
from ..state.auth import FILE_COMMAND_RIGHTS, Grant
from ..wire import codec
from ..wire.frames import FILE_CHUNK_SIZE, PREFIX
from ..wire.limits import decode_request
from ..wire.names import check_file_name
from ..wire.sendfile import SendfileProducer, can_sendfile
from .dispatch import REPLIED, Dispatcher, command
from .file_disk import move_into_place, open_for_download, open_partial, sync_and_close
from .files import FileService


class IFileConnection(Interface):
    """What a :class:`FileSession` needs of the connection it serves."""

    peer = Attribute("The peer's address, for log lines (str).")
    grant = Attribute("What the connection's token may do (a Grant).")
    transport = Attribute(
        "The connection's transport: raw download frames are written to it, "
        "and it is closed (loseConnection) when the transfer cannot go on.")

    def send_reply(request_id: int, result: Any) -> None:
        """Send ``[1, request_id, result]``."""

    def send_error(request_id: Optional[int], error: LTtxError) -> None:
        """Send ``[2, request_id, code, message]``."""

    def pauseProducing() -> None:
        """Stop reading the connection's frames (the disk lags behind)."""

    def resumeProducing() -> None:
        """Read them again, frames already received first."""


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
        self.sender: Any = None  # a FileSender, or a SendfileProducer
        self.hashed: Optional[Deferred[str]] = None  # the MD5 made in a thread (sendfile)
        self.known: Optional[str] = None  # the MD5 recorded at the file's upload
        self.sent = False
        self.done = offset  # bytes of the file sent so far, for the status page
        self.started = time.monotonic()


class FileSession:
    """
    The file-transfer side of one connection (``hello`` with mode ``file``).

    It holds that connection's transfer (one at a time) and answers the
    requests of the "File transfer" section of ``docs/protocol.md``, one
    ``cmd_<name>`` handler each, through a :class:`Dispatcher`.

    :param service: the daemon's files.
    :param connection: the authenticated connection it serves.
    """

    log = Logger()

    def __init__(self, service: FileService, connection: IFileConnection) -> None:
        self.service = service
        self.connection = connection
        self.peer: str = connection.peer
        self.upload: Optional[_Upload] = None
        self.download: Optional[_Download] = None
        self.opening_download = False
        self.closed = False
        self.bytes_sent = 0  # file data written, for the status page
        # The session answers for its connection: nothing is sent once closed.
        self.dispatcher = Dispatcher(self, self, FILE_COMMAND_RIGHTS, self.log)
        os.makedirs(service.partial_directory, exist_ok=True)
        service.sessions.add(self)
        read_big(connection.transport)
        self._idle_call: Any = None
        self._last_progress = 0.0
        if service.clock is not None:
            self._last_progress = service.clock.seconds()
            self._idle_call = service.clock.callLater(service.idle_timeout, self._check_idle)

    # -- a peer that goes silent ------------------------------------------------

    def _progress(self) -> None:
        """Bytes moved, or a request came: the peer is alive."""
        if self._idle_call is not None:
            self._last_progress = self.service.clock.seconds()  # type: ignore[union-attr]

    def _check_idle(self) -> None:
        clock, timeout = self.service.clock, self.service.idle_timeout
        assert clock is not None
        idle = clock.seconds() - self._last_progress
        upload = self.upload
        daemon_busy = self.opening_download or (upload is not None and (
            upload.writer is None or upload.ending))
        if self.closed:
            self._idle_call = None
            return
        if idle < timeout or daemon_busy:
            # (While the daemon opens, hashes or syncs a file, the peer waits on it.)
            self._idle_call = clock.callLater(max(timeout - idle, 1.0), self._check_idle)
            return
        self._idle_call = None
        what = (f"upload of {upload.name} at {upload.received} of {upload.size} bytes"
                if upload is not None else
                f"download of {self.download.name}" if self.download is not None else
                "no transfer")
        self.log.info("{peer}: file connection made no progress for {seconds:g} s "
                      "({what}); closed", peer=self.peer, seconds=timeout, what=what)
        self.connection.transport.abortConnection()

    @property
    def owner(self) -> str:
        """Whose partial uploads this connection's count among (its token or host)."""
        peer = getattr(self.connection.transport, "getPeer", lambda: None)()
        return self.service.owner_of(self.grant.name, str(getattr(peer, "host", self.peer)))

    @property
    def grant(self) -> Grant:
        """What the connection's token may do."""
        grant: Grant = self.connection.grant
        return grant

    # -- frames ---------------------------------------------------------------

    def frame_received(self, frame: bytes) -> None:
        """One frame of the connection: upload data while an upload expects it, else a request."""
        if self.closed:
            return
        self._progress()
        upload = self.upload
        if upload is not None and upload.writer is not None and upload.received < upload.size:
            self._upload_data(upload, frame)
            return
        if self.download is not None and not self.download.sent:
            self._fatal(None, BadRequest("no request may be sent while a download streams"))
            return
        try:
            message = decode_request(frame)
        except BadRequest as e:
            self.dispatcher.refuse(None, "frame", e)
            return
        if (not isinstance(message, list) or len(message) != 4
                or message[0] != codec.REQUEST or type(message[1]) is not int
                or not isinstance(message[3], list)):
            self.dispatcher.refuse(None, "frame", BadRequest(
                "a file connection takes request frames [0, id, command, args]"))
            return
        _, request_id, name, args = message
        self.dispatcher.dispatch(request_id, name, args)

    def send_reply(self, request_id: int, result: Any) -> None:
        """Send a reply on the connection, unless the session is closed."""
        if not self.closed:
            self.connection.send_reply(request_id, result)

    def send_error(self, request_id: Optional[int], error: LTtxError) -> None:
        """Send an error on the connection, unless the session is closed."""
        if not self.closed:
            self.connection.send_error(request_id, error)

    def _fatal(self, request_id: Optional[int], error: LTtxError) -> None:
        """Send an error and close; :meth:`connection_lost` ends what is left."""
        self.dispatcher.refuse(request_id, "transfer", error)
        self.connection.transport.loseConnection()
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
            if download.hashed is not None:  # nobody will ask for it now
                download.hashed.addErrback(lambda failure: None)
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
        self.connection.transport.loseConnection()
        return stopped

    def _close(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        self.closed = True
        self.upload = None
        self.download = None
        self.service.sessions.discard(self)

    def _busy(self) -> None:
        if self.upload is not None or self.download is not None or self.opening_download:
            raise BadRequest("one transfer at a time on a file connection")

    # -- list and delete -----------------------------------------------------

    @command(0)
    def cmd_list(self) -> "Deferred[list[dict[str, Any]]]":
        grant = self.grant
        # A token sees only the files it may download; the folder is scanned
        # in the I/O thread.
        return self.service.listing().addCallback(
            lambda files: [f for f in files if grant.allows("download", f["name"])])

    @command(1)
    def cmd_delete(self, name: Any) -> bool:
        try:
            deleted = self.service.delete(name)
        except OSError as e:
            raise StorageError(f"cannot delete {name}: {e.strerror or e}") from None
        if deleted:
            self.log.info("{peer} deleted file {name}", peer=self.peer, name=name)
        return deleted

    # -- upload ----------------------------------------------------------------

    @command(1)
    def cmd_partial(self, name: Any) -> dict[str, int]:
        """How many bytes of an interrupted upload of ``name`` the daemon holds."""
        name = check_file_name(name)
        if name in self.service.uploading:
            raise FileBusy(f"{name} is being uploaded by another connection")
        try:
            size = os.stat(self.service.partial_path_of(name)).st_size
        except FileNotFoundError:
            size = 0
        return {"offset": size}

    @command(2, 4)
    def cmd_upload(self, name: Any, size: Any, offset: Any = 0,
                   prefix_md5: Any = None) -> "Deferred[dict[str, int]]":
        name = check_file_name(name)
        if type(size) is not int or size < 0:
            raise BadRequest("upload size must be a non-negative int")
        if type(offset) is not int or not 0 <= offset <= size:
            raise BadRequest("upload offset must be an int between 0 and the size")
        if prefix_md5 is not None and not isinstance(prefix_md5, str):
            raise BadRequest("upload prefix_md5 must be a hex string or nil")
        self._busy()
        if name in self.service.uploading:
            raise FileBusy(f"{name} is being uploaded by another connection")
        self.service.check_upload(self.owner, name, size, offset)
        self.service.uploading.add(name)
        upload = _Upload(name, size, offset, self.service.partial_path_of(name))
        self.upload = upload
        d = self.service.run_in_thread(open_partial, upload.partial, offset, prefix_md5,
                                       self.service.real_partial_directory)
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
        self.service.bounds.started(self.owner, upload.name, upload.size)
        upload.writer = StreamWriter(file, md5, self.service.run_in_thread, self.connection,
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

    @command(1)
    def cmd_upload_end(self, md5_hex: Any) -> "Deferred[Any]":
        upload = self.upload
        if upload is None or upload.writer is None or upload.received < upload.size:
            raise BadRequest("upload_end comes after all the data of an upload")
        if upload.ending:
            raise BadRequest("upload_end was already sent")
        upload.ending = True
        writer = upload.writer
        d = writer.drained()
        d.addCallback(lambda _: self.service.run_in_thread(sync_and_close, writer.file))
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
        # The checked MD5 is recorded on the file: a download sends it
        # instead of hashing the file again.
        d = self.service.run_in_thread(move_into_place, upload.partial,
                                       self.service.path_of(upload.name), ours)
        return d.addCallback(lambda _: self._upload_kept(upload, ours))

    def _upload_kept(self, upload: _Upload, ours: str) -> dict[str, Any]:
        seconds = time.monotonic() - upload.started
        self.service.bounds.forget([upload.name])  # a file now, no longer a partial
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
                self.service.bounds.forget([upload.name])
            self.service.uploading.discard(upload.name)
            then()

        if upload.writer is None:
            # Still opening: the open callback closes the file and frees the name.
            then()
            return
        upload.writer.drained().addBoth(done)

    # -- download --------------------------------------------------------------

    @command(1, 3, replies_itself=True)
    def cmd_download(self, request_id: int, name: Any, offset: Any = 0,
                     prefix_md5: Any = None) -> "Deferred[object]":
        """The header reply, then the file in raw frames (sent here, not by the dispatcher)."""
        name = check_file_name(name)
        if type(offset) is not int or offset < 0:
            raise BadRequest("download offset must be a non-negative int")
        if prefix_md5 is not None and not isinstance(prefix_md5, str):
            raise BadRequest("download prefix_md5 must be a hex string or nil")
        self._busy()
        path = self.service.path_of(name)
        self.opening_download = True
        d = self.service.run_in_thread(open_for_download, path, offset, prefix_md5,
                                       self.service.real_directory)
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
                        md5: Any, offset: int, known: Optional[str] = None) -> object:
        if self.closed:
            file.close()
            return REPLIED
        download = _Download(name, size, offset, file, md5)
        download.known = known
        self.download = download
        self.log.info("{peer}: download of {name} started at byte {offset} of {size}",
                      peer=self.peer, name=name, offset=offset, size=size)
        self.send_reply(request_id, {"name": name, "size": size, "offset": offset})
        transport = self.connection.transport
        if can_sendfile(transport):
            # The kernel copies the file to the socket; the MD5 is the one
            # recorded at its upload, else made in a thread from a descriptor
            # of its own (closed there).
            def counted(data: int, wire: int) -> None:
                self._progress()
                self.bytes_sent += wire
                download.done += data

            download.hashed = succeed(known) if known is not None else \
                self.service.run_in_thread(
                    hash_range, os.dup(file.fileno()), offset, size - offset, md5)
            download.sender = SendfileProducer(transport, file.fileno(), offset,
                                               size - offset, FILE_CHUNK_SIZE, counted)
            download.sender.start().addCallbacks(lambda _: self._download_sent(download),
                                                 lambda failure: None)
            return REPLIED
        file.seek(offset)
        sender = FileSender()
        sender.CHUNK_SIZE = FILE_CHUNK_SIZE
        download.sender = sender

        def frame(chunk: bytes) -> bytes:
            if known is None:
                download.md5.update(chunk)
            self._progress()
            self.bytes_sent += len(chunk) + PREFIX.size
            download.done += len(chunk)
            return PREFIX.pack(len(chunk)) + chunk

        sent = sender.beginFileTransfer(file, transport, frame)
        sent.addCallbacks(lambda _: self._download_sent(download),
                          lambda failure: None)  # stopped: connection_lost logged it
        return REPLIED

    def _download_sent(self, download: _Download) -> None:
        download.sent = True
        download.sender = None
        download.file.close()

    @command(1)
    def cmd_download_end(self, md5_hex: Any) -> Any:
        download = self.download
        if download is None or not download.sent:
            raise BadRequest("download_end comes after all the data of a download")
        self.download = None
        if download.hashed is not None:  # made in a thread: its result, once there
            return download.hashed.addCallbacks(
                lambda ours: self._download_checked(download, md5_hex, ours),
                lambda failure: Failure(StorageError(
                    f"cannot read {download.name}: {failure.getErrorMessage()}")))
        return self._download_checked(
            download, md5_hex, download.known or download.md5.hexdigest())

    def _download_checked(self, download: _Download, md5_hex: Any, ours: str) -> dict[str, str]:
        if ours != md5_hex:
            raise ChecksumMismatch(
                f"{download.name}: the daemon sent MD5 {ours}, the client computed "
                f"{str(md5_hex)[:40]}")
        seconds = time.monotonic() - download.started
        self.log.info(
            "{peer}: download of {name} finished: {size} bytes, md5 {md5}, "
            "{mib_s:.1f} MiB/s ({how}{digest})", peer=self.peer, name=download.name,
            size=download.size, md5=ours, how="sendfile" if download.hashed else "read",
            digest=", md5 recorded at upload" if download.known else "",
            mib_s=(download.size - download.offset) / 2**20 / max(seconds, 1e-6))
        return {"md5": ours}
