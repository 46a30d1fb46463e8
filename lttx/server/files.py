"""
The daemon's files: :class:`FileService`, the folder they live in.

The daemon stores files in one flat folder (``<data-dir>/files/``).  An upload
is written to ``.partial/<name>`` in that folder, hashed as it arrives, and
renamed into place only once the client's MD5 matches; a partial left by an
interrupted upload stays there (hidden: names may not start with a dot) so the
upload can be resumed from the byte reached.  Only one upload of a name runs at
a time (:class:`~lttx.errors.FileBusy` for the second).

The service owns the folder, the size limit, the names being uploaded, the
listing, deleting and status of files, and the sessions in flight (stopped
with the daemon).  One connection's transfer is its
:class:`~lttx.server.file_session.FileSession`; the exchange is in
``docs/protocol.md`` ("File transfer"), the client's side in
:mod:`lttx.client.files`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..diskio import RunInThread, unlink_quietly
from ..errors import BadFileName, StorageError
from ..wire.names import check_file_name
from .upload_bounds import PARTIAL_MAX_AGE, UploadBounds

#: The hidden folder, inside the files folder, holding uploads in progress.
PARTIAL_DIR = ".partial"
#: Seconds a file connection may make no progress before it is closed.
IDLE_TIMEOUT = 60.0


class Transfer(Protocol):
    """What the service asks of one connection's file session."""

    @property
    def upload(self) -> Optional[object]:
        """The upload in flight, if any."""

    @property
    def download(self) -> Optional[object]:
        """The download in flight, if any."""

    def stop(self, reason: str) -> "Deferred[None]":
        """Discard an upload in flight and close the connection."""


def _addressable(name: str) -> bool:
    """Whether a client can name this file: a plain name, in NFC form."""
    try:
        return check_file_name(name) == name
    except BadFileName:
        return False


class FileService(Service):
    """
    The daemon's files: the folder, the size limit, the uploads in flight.

    :param directory: the files folder (``<data-dir>/files``); created at start.
    :param run_in_thread: runs blocking file work off the reactor thread
        (:func:`lttx.diskio.pool_runner`).
    :param max_file_size: the largest accepted upload in bytes; 0 for no limit.
    :param clock: times :data:`IDLE_TIMEOUT`; None: a silent peer is never closed
        (tests that step a session by hand).
    :param idle_timeout: seconds a file connection may make no progress (no
        byte in or out, no request) before it is closed; its name is freed
        and an upload's partial kept for a resume.
    :param bounds: the disk reserve and the partial uploads per owner; None:
        the default bounds of partials and no reserve (no journal to keep room
        for: tests, :mod:`lttx.testing`; ``makeService`` passes ``--disk-reserve``).
    :param per_token: count partials per token name (a roles file), else per host.
    """

    log = Logger()

    def __init__(self, directory: str, run_in_thread: RunInThread,
                 max_file_size: int = 0, clock: Optional[IReactorTime] = None,
                 idle_timeout: float = IDLE_TIMEOUT, bounds: Optional[UploadBounds] = None,
                 per_token: bool = False) -> None:
        self.clock = clock
        self.bounds = bounds if bounds is not None else UploadBounds(reserve=0)
        self.per_token = per_token
        self.idle_timeout = idle_timeout
        self.directory = os.path.abspath(directory)
        self.partial_directory = os.path.join(self.directory, PARTIAL_DIR)
        #: The folders resolved once: a file is opened only if its folder still
        #: resolves here (a link planted as ``.partial`` leads nowhere else).
        self.real_directory = os.path.realpath(self.directory)
        self.real_partial_directory = os.path.join(self.real_directory, PARTIAL_DIR)
        self.run_in_thread = run_in_thread
        self.max_file_size = max_file_size
        self.uploading: set[str] = set()
        #: The sessions of the open file connections.
        self.sessions: set[Transfer] = set()

    def startService(self) -> None:
        os.makedirs(self.partial_directory, exist_ok=True)
        self.real_directory = os.path.realpath(self.directory)
        self.real_partial_directory = os.path.join(self.real_directory, PARTIAL_DIR)
        self.remove_stale_partials(time.time())
        super().startService()

    def sweep_stale(self) -> "Deferred[Any]":
        """Remove abandoned partials in the I/O thread (``makeService`` runs this
        every :data:`~lttx.server.upload_bounds.STALE_SWEEP_INTERVAL` seconds)."""
        d = self.run_in_thread(_remove_stale, self.partial_directory, time.time(),
                               PARTIAL_MAX_AGE, frozenset(self.uploading))
        d.addCallback(self._removed_stale, PARTIAL_MAX_AGE)
        return d.addErrback(
            lambda f: self.log.failure("could not remove stale partial uploads", f))

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
        """Remove partial uploads untouched for ``max_age`` seconds (not those of
        uploads in flight); how many went.  On the calling thread (at start)."""
        removed = _remove_stale(self.partial_directory, now, max_age,
                                frozenset(self.uploading))
        self._removed_stale(removed, max_age)
        return len(removed)

    def _removed_stale(self, removed: list[str], max_age: float) -> None:
        if removed:
            self.log.info("removed {count} partial uploads untouched for {hours:g} h",
                          count=len(removed), hours=max_age / 3600)
            self.bounds.forget(removed)

    def owner_of(self, grant_name: str, host: str) -> str:
        """Whose partials an upload counts among: the token's, or the host's."""
        return f"token {grant_name}" if self.per_token else f"host {host}"

    def check_upload(self, owner: str, name: str, size: int, offset: int) -> None:
        """:raises StorageError: if an upload of ``size`` bytes from ``offset`` is
        not accepted (over --max-file-size, the disk full, the reserve);
        :raises LimitExceeded: past the owner's partial uploads."""
        self.check_size(size)
        in_flight = sum(max(s.upload.size - s.upload.received, 0)  # type: ignore[attr-defined]
                        for s in self.sessions if s.upload is not None)
        self.bounds.check(self.directory, owner, name, size, offset, in_flight)

    def path_of(self, name: object) -> str:
        return os.path.join(self.directory, check_file_name(name))

    def partial_path_of(self, name: str) -> str:
        return os.path.join(self.partial_directory, check_file_name(name))

    def check_size(self, size: int) -> None:
        """:raises StorageError: if a file of ``size`` bytes is over --max-file-size."""
        if self.max_file_size and size > self.max_file_size:
            raise StorageError(f"a file of {size} bytes is over the daemon's "
                               f"--max-file-size of {self.max_file_size} bytes")

    def list(self) -> list[dict[str, Any]]:
        """
        The stored files, by name: ``{"name", "size", "mtime"}`` each.

        Only regular files with names a client could ask for: links, folders
        and names put there by other means that the name rules refuse
        (control characters, a leading dot...) are not listed.
        """
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.is_file(follow_symlinks=False) or not _addressable(entry.name):
                    continue
                info = entry.stat(follow_symlinks=False)
                found.append({"name": entry.name, "size": info.st_size,
                              "mtime": info.st_mtime})
        return sorted(found, key=lambda f: f["name"])

    def listing(self) -> "Deferred[list[dict[str, Any]]]":
        """:meth:`list`, run in the I/O thread: a folder of 100,000 files takes
        ~0.5 s to scan, which must not stop the reactor (and every client)."""
        return self.run_in_thread(self.list)

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

    def status(self) -> "Deferred[dict[str, Any]]":
        """What ``lttx status`` shows of the files; the folders are scanned in
        the I/O thread, the transfers counted now."""
        transfers = {
            "uploads": sum(1 for s in self.sessions if s.upload is not None),
            "downloads": sum(1 for s in self.sessions if s.download is not None),
        }

        def on_disk() -> dict[str, Any]:
            files = self.list()
            return {"files": len(files), "bytes": sum(f["size"] for f in files),
                    **transfers, "partials": len(os.listdir(self.partial_directory)),
                    **self.bounds.status()}

        return self.run_in_thread(on_disk)


def _remove_stale(folder: str, now: float, max_age: float, busy: frozenset[str]) -> list[str]:
    """Remove the partials in ``folder`` untouched for ``max_age`` seconds, but
    those of ``busy`` names; their names (runs in the I/O thread)."""
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name in busy or not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                unlink_quietly(entry.path)
                removed.append(entry.name)
    return removed
