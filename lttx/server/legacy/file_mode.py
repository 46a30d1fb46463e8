"""
``file_mode``: the original client's ``send_file`` and ``recv_file``
connections, on the daemon's files (:class:`~lttx.server.files.FileService`).

Upload: handshake ``{"file_mode": "upload_file", "file_name", "file_hash"}``
-> raw ``i am ok`` -> the file's raw bytes until the client closes.  The
bytes are written aside (a hidden partial in the files folder) by a
:class:`~lttx.diskio.StreamWriter`, which hashes them and pauses the
connection while the disk lags; once the client closes, the file is synced,
its MD5 compared with the client's ``file_hash``, and only then renamed into
place.  A mismatch, a file over ``--max-file-size`` or an interrupted
upload keeps nothing (logged: the old client cannot be told).

Download: handshake with ``download_file`` -> raw ``file exist``, then,
:data:`SETTLE_DELAY` later (the client reads the answer with one
``recv(1024)``: it must come alone), the raw bytes and close; or raw
``file does not exist``.

Names are checked with :func:`~lttx.wire.names.check_file_name` and the
token's ``upload``/``download`` rights, as on the native port; a refused
upload is answered with a JSON ``{"code": -1, "msg"}`` (the old client
prints that the server refused).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from ...diskio import StreamWriter, read_big, stop_sender, unlink_quietly
from ...errors import BadRequest, FileBusy, StorageError
from ...state.auth import authorize
from ...wire.names import check_file_name
from ..file_disk import move_into_place, open_regular, sync_and_close
from .handshake import LegacyProtocol, Mode
from .push_mode import SETTLE_DELAY

#: Bytes an upload may send before its file is open (the client waits for
#: ``i am ok``, so none should come).
EARLY_DATA_MAX = 1024 * 1024


class _Upload:
    def __init__(self, name: str, md5_hex: str, partial: str) -> None:
        self.name = name
        self.md5_hex = md5_hex
        self.partial = partial
        self.writer: Optional[StreamWriter] = None
        self.received = 0
        self.discard: Optional[str] = None  # why it will not be kept
        self.started = time.monotonic()
        self.finished: Deferred[None] = Deferred()


class FileMode(Mode):
    """One ``file_mode`` connection: one upload or one download."""

    name = "file_mode"
    log = Logger()

    def __init__(self, connection: LegacyProtocol, handshake: dict[str, Any]) -> None:
        self.connection = connection
        self.service = connection.state.files
        if self.service is None:
            raise BadRequest("this daemon does not serve files")
        self.upload: Optional[_Upload] = None
        self.download: Optional[str] = None
        self._early: list[bytes] = []
        self._sender: Optional[FileSender] = None
        self._file: Any = None
        kind = handshake.get("file_mode")
        name = check_file_name(handshake.get("file_name"))
        if kind == "upload_file":
            self._start_upload(name, handshake.get("file_hash"))
        elif kind == "download_file":
            self._start_download(name)
        else:
            raise BadRequest(f"unknown file_mode {str(kind)[:40]!r}")
        self.service.sessions.add(self)
        read_big(connection.transport)

    # -- upload ---------------------------------------------------------------

    def _start_upload(self, name: str, md5_hex: Any) -> None:
        assert self.service is not None
        authorize(self.connection.grant, "upload", name)
        if not isinstance(md5_hex, str) or len(md5_hex) != 32:
            raise BadRequest("file_hash must be the file's MD5 in hex")
        if name in self.service.uploading:
            raise FileBusy(f"{name} is being uploaded by another connection")
        full = self.service.bounds.room(self.service.directory, 0)
        if full is not None:
            raise StorageError(full)
        self.service.uploading.add(name)
        partial = os.path.join(self.service.partial_directory, f".legacy-{uuid.uuid4().hex}")
        upload = self.upload = _Upload(name, md5_hex.lower(), partial)
        # Never through a link, and only inside the daemon's folder (as natively).
        d = self.service.run_in_thread(open_regular, partial,
                                       os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                       self.service.real_partial_directory)
        d.addCallbacks(lambda file: self._upload_opened(upload, file),
                       lambda failure: self._upload_open_failed(upload, failure))

    def _upload_opened(self, upload: _Upload, file: Any) -> None:
        assert self.service is not None
        transport = self.connection.transport
        upload.writer = StreamWriter(file, hashlib.md5(), self.service.run_in_thread,
                                     transport, lambda f: self._write_failed(upload, f))
        if self.connection.lost:
            self._finish(upload)
            return
        self.log.info("{peer}: legacy upload of {name} started", peer=self.connection.peer,
                      name=upload.name)
        transport.write(b"i am ok")
        early, self._early = self._early, []
        for chunk in early:
            self._upload_data(upload, chunk)

    def _upload_open_failed(self, upload: _Upload, failure: Failure) -> None:
        assert self.service is not None
        self.service.uploading.discard(upload.name)
        self.upload = None
        error = failure.getErrorMessage()
        self.log.warn("{peer}: legacy upload of {name} refused: cannot write it: {error}",
                      peer=self.connection.peer, name=upload.name, error=error)
        self.connection.refuse({"code": -1, "msg": f"storage: {error}"}, delay=0)
        upload.finished.callback(None)

    def _write_failed(self, upload: _Upload, failure: Failure) -> None:
        upload.discard = f"writing it failed: {failure.getErrorMessage()}"
        self.connection.transport.loseConnection()

    def data_received(self, data: bytes) -> None:
        upload = self.upload
        if upload is None:
            return  # a download's client sends nothing
        if upload.writer is None:
            self._early.append(data)
            if sum(map(len, self._early)) > EARLY_DATA_MAX:
                upload.discard = "data came before the daemon said it was ready"
                self.connection.transport.loseConnection()
            return
        self._upload_data(upload, data)

    def _upload_data(self, upload: _Upload, data: bytes) -> None:
        assert self.service is not None and upload.writer is not None
        if upload.discard is not None:
            return
        upload.received += len(data)
        limit = self.service.max_file_size
        if limit and upload.received > limit:
            upload.discard = f"it is over the daemon's --max-file-size of {limit} bytes"
            self.connection.transport.loseConnection()
            return
        # The old protocol declares no size: the reserve is checked as data comes.
        full = self.service.bounds.room(self.service.directory, upload.writer.queued + len(data))
        if full is not None:
            upload.discard = full
            self.connection.transport.loseConnection()
            return
        upload.writer.write(data)

    def _finish(self, upload: _Upload) -> None:
        """The client closed: keep the file if its MD5 is the client's."""
        assert self.service is not None and upload.writer is not None
        service, writer = self.service, upload.writer
        d = writer.drained()
        d.addCallback(lambda _: service.run_in_thread(sync_and_close, writer.file))

        def check(_: Any) -> Any:
            ours = writer.md5.hexdigest()
            if upload.discard is None and ours != upload.md5_hex:
                upload.discard = (f"the daemon received MD5 {ours} ({upload.received} bytes), "
                                  f"the client sent {upload.md5_hex}")
            if upload.discard is not None:
                return None
            return service.run_in_thread(move_into_place, upload.partial,
                                         service.path_of(upload.name), ours).addCallback(
                lambda _: self._kept(upload, ours))

        d.addCallback(check)
        d.addErrback(self._finish_failed, upload)
        d.addBoth(lambda _: self._finished(upload))

    def _kept(self, upload: _Upload, ours: str) -> None:
        seconds = time.monotonic() - upload.started
        self.log.info("{peer}: legacy upload of {name} finished: {size} bytes, md5 {md5} "
                      "verified, {mib_s:.1f} MiB/s", peer=self.connection.peer,
                      name=upload.name, size=upload.received, md5=ours,
                      mib_s=upload.received / 2**20 / max(seconds, 1e-6))

    def _finish_failed(self, failure: Failure, upload: _Upload) -> None:
        if upload.discard is None:
            upload.discard = f"storing it failed: {failure.getErrorMessage()}"
        if not failure.check(OSError, StorageError):
            self.log.failure("{peer}: legacy upload of {name} failed", failure,
                             peer=self.connection.peer, name=upload.name)

    def _finished(self, upload: _Upload) -> None:
        assert self.service is not None
        writer = upload.writer
        if writer is not None and not writer.file.closed:
            writer.file.close()
        if upload.discard is not None:
            unlink_quietly(upload.partial)
            self.log.warn("{peer}: legacy upload of {name} not kept: {reason}",
                          peer=self.connection.peer, name=upload.name, reason=upload.discard)
        self.service.uploading.discard(upload.name)
        upload.finished.callback(None)

    # -- download ---------------------------------------------------------------

    def _start_download(self, name: str) -> None:
        assert self.service is not None
        authorize(self.connection.grant, "download", name)
        self.download = name
        d = self.service.run_in_thread(open_regular, self.service.path_of(name), os.O_RDONLY,
                                       self.service.real_directory)
        d.addCallbacks(self._download_opened, self._download_missing)

    def _download_missing(self, failure: Failure) -> None:
        failure.trap(OSError)
        if not failure.check(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.log.warn("{peer}: legacy download of {name} failed: {error}",
                          peer=self.connection.peer, name=self.download,
                          error=failure.getErrorMessage())
        if not self.connection.lost:
            self.connection.transport.write(b"file does not exist")
            self.connection.transport.loseConnection()

    def _download_opened(self, file: Any) -> None:
        if self.connection.lost:
            file.close()
            return
        self._file = file
        self.connection.transport.write(b"file exist")
        clock = self.connection.state.clock
        if clock is None:
            self._send()
        else:
            clock.callLater(SETTLE_DELAY, self._send)

    def _send(self) -> None:
        if self.connection.lost:
            return
        sender = self._sender = FileSender()
        started = time.monotonic()
        d = sender.beginFileTransfer(self._file, self.connection.transport)

        def sent(_: Any) -> None:
            size = self._file.tell()
            self._file.close()
            self.log.info("{peer}: legacy download of {name} finished: {size} bytes in "
                          "{seconds:.3f} s", peer=self.connection.peer, name=self.download,
                          size=size, seconds=time.monotonic() - started)
            self.connection.transport.loseConnection()

        d.addCallbacks(sent, lambda failure: None)  # stopped: connection_lost says so

    # -- the connection -----------------------------------------------------

    def connection_lost(self, reason: Failure) -> None:
        assert self.service is not None
        self.service.sessions.discard(self)
        if self._sender is not None:
            stop_sender(self._sender)
        if self._file is not None and not self._file.closed:
            self._file.close()
        upload = self.upload
        if upload is not None and upload.writer is not None:
            self._finish(upload)

    def stop(self, reason: str) -> "Deferred[None]":
        """The daemon stops: an upload in flight is discarded."""
        upload = self.upload
        self.connection.transport.loseConnection()
        if upload is None:
            return succeed(None)
        if upload.discard is None:
            upload.discard = reason
        return upload.finished
