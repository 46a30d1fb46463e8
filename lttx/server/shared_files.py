"""
Files across the daemons of one Redis (``--engine redis``): :class:`SharedFiles`
and the file session it gives each file connection, :class:`SharedFileSession`.

A file stays on the disk of the daemon that received it; the Redis file
directory (:class:`~lttx.engines.redis.filedir.FileDirectory`) says which
daemon holds each name.  Through any daemon:

- ``list`` shows the directory: every daemon's files, each with its holder;
- ``download`` of a file held here is served from disk as on one daemon; of
  a file held by daemon A, this daemon opens a file connection to A
  (:mod:`lttx.server.peer_files`, with A's files token from the daemon
  directory) and relays A's raw frames to its client as they come, A's
  connection registered as the producer of the client's (a slow client
  stops the reading from A, and A's sender with it: memory stays flat).
  The client's ``download_end`` MD5 goes on to A, which compares it with the
  MD5 of the bytes it read from its disk: checked end to end;
- ``delete`` of a file held by A is forwarded to A, which deletes it and its
  entry (an entry removed alone would be listed again by A's sweep);
- an ``upload`` completes here and its entry then names this daemon: the
  last completed upload of a name wins (a copy elsewhere is deleted by its
  daemon's next sweep).

If the holding daemon is not in the daemon directory, or cannot be reached,
the client gets :class:`~lttx.errors.Unavailable` naming it, at once.  A
connection opened with a files token (another daemon relaying) is served
this daemon's own files only, so requests never travel further.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..diskio import fsync_directory
from ..engines.redis.directory import DaemonDirectory
from ..engines.redis.filedir import SWEEP_PERIOD, Entry, FileDirectory, plan_sweep
from ..errors import BadRequest, Unavailable
from ..state.auth import Grant
from ..wire.frames import PREFIX
from ..wire.names import check_file_name
from .dispatch import REPLIED, command
from .file_session import FileSession, IFileConnection
from .files import FileService, _addressable
from .peer_files import PeerFileProtocol, connect_peer

#: The file, in the files folder, holding the folder's id (:func:`folder_id`).
FOLDER_ID = ".lttx-folder-id"

#: Seconds between two tries at listing an upload completed while Redis was away.
RETRY_PERIOD = 1.0

#: What another daemon's files token may do here: download (and list) to
#: relay a download, upload (which deleting counts as) to forward a delete.
DAEMON_GRANT = Grant.parse("daemon", ["download", "upload"])


class SharedFiles(Service):
    """
    This daemon's part in the files of every daemon on its Redis.

    :param files: this daemon's own files folder.
    :param directory: which daemon holds each file (in Redis).
    :param daemons: the daemon directory: where each daemon listens, its
        files token, whether it was heard from lately.
    :param reactor: connects to the other daemons and times the sweep.
    """

    log = Logger()

    def __init__(self, files: FileService, directory: FileDirectory,
                 daemons: DaemonDirectory, reactor: Any,
                 sweep_period: float = SWEEP_PERIOD) -> None:
        self.files = files
        self.directory = directory
        self.daemons = daemons
        self.reactor = reactor
        #: This daemon's files folder id: the holder of the entries it writes.
        self.me = directory.holder_id
        self.sweep_period = sweep_period
        #: Uploads completed here while Redis was away: their MD5 for the sweep.
        self.unlisted: dict[str, Entry] = {}
        self._loop: Optional[LoopingCall] = None
        self._sweeping = False
        self._swept = False  # a first sweep went through (and said so)
        self._retry: Any = None  # the next try at listing the unlisted uploads
        self._warned: set[str] = set()  # unlisted names a warning was logged for

    # -- wiring ---------------------------------------------------------------

    def session(self, service: FileService, connection: IFileConnection) -> FileSession:
        """The file session of a new file connection (``ServerState.file_sessions``)."""
        return SharedFileSession(service, connection, self)

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self.reactor
        # The first sweep once Redis answers (a folder of files from before the
        # engine, or from a Redis that restarted empty, is listed at once).
        connected = getattr(getattr(self.directory.client, "service", None),
                            "whenConnected", None)
        first: Deferred[Any] = connected() if connected is not None else succeed(None)
        first.addCallback(lambda _: self._start_sweeping())
        first.addErrback(lambda f: None)  # stopped before Redis answered

    def _start_sweeping(self) -> None:
        if self.running and self._loop is not None and not self._loop.running:
            self._loop.start(self.sweep_period, now=True).addErrback(
                lambda f: self.log.failure("the file sweep stopped", f))

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    # -- the other daemons ----------------------------------------------------

    def describe(self, holder: str) -> str:
        """How errors and log lines name the daemon of a files folder."""
        found = self.daemons.holding(holder)
        if found is None:
            return f"the daemon of files folder {holder}"
        return _describe(holder, *found)

    def connect(self, name: str, entry: Entry) -> "Deferred[PeerFileProtocol]":
        """A file connection to the daemon holding ``name``."""
        found = self.daemons.holding(entry.holder)
        if found is None or not found[1].get("files_token") or not found[1].get("listening"):
            return fail(Unavailable(
                f"{name} is held by the daemon of files folder {entry.holder}, which is "
                f"down (not in the daemon directory)"))
        daemon_id, info = found

        def failed(failure: Failure) -> Failure:
            failure.trap(Unavailable)
            return Failure(Unavailable(f"{name} is held by {failure.getErrorMessage()}"))

        return connect_peer(self.reactor, info["listening"][0], info.get("host"),
                            info["files_token"], _describe(entry.holder, daemon_id, info)
                            ).addErrback(failed)

    # -- this daemon's files in the directory ------------------------------------

    def uploaded(self, name: str, size: int, md5: str) -> "Deferred[None]":
        """An upload completed here: the directory names this daemon (never fails;
        while Redis is away, it is tried again every :data:`RETRY_PERIOD` seconds)."""
        try:
            mtime = os.stat(self.files.path_of(name), follow_symlinks=False).st_mtime
        except OSError:
            mtime = time.time()
        self.unlisted[name] = Entry(self.me, size, md5, mtime)
        return self._list_uploaded(name)

    def _list_uploaded(self, name: str) -> "Deferred[None]":
        entry = self.unlisted.get(name)
        if entry is None:
            return succeed(None)

        def listed(found: tuple[Optional[Entry], bool]) -> Any:
            old, replaced = found
            if self.unlisted.get(name) is entry:
                del self.unlisted[name]
            if name in self._warned:
                self._warned.discard(name)
                self.log.info("{name} is now in the Redis file directory (it was kept here "
                              "while Redis was away)", name=name)
            # Neither waits: the upload's reply does not hang on another daemon.
            if not replaced and old is not None:
                # Another daemon's upload of the name completed later: it stays.
                self.log.info("{name}: an upload completed later on {daemon}; the copy "
                              "received here is superseded", name=name,
                              daemon=self.describe(old.holder))
                self.drop_if_superseded(name).addErrback(
                    lambda f: self.log.info("{name}: the superseded copy stays until the "
                                            "next sweep ({error})", name=name,
                                            error=f.getErrorMessage()))
            elif old is not None and old.holder != self.me:
                self.tell_superseded(name, old)

        def not_listed(failure: Failure) -> None:
            if name not in self._warned:
                self._warned.add(name)
                self.log.warn("{name} is kept here but not yet in the Redis file directory "
                              "({error}); it is listed once Redis is back", name=name,
                              error=failure.getErrorMessage())
            self._retry_soon()

        d = self.directory.register(name, entry.size, entry.md5, entry.mtime)
        return d.addCallbacks(listed, not_listed).addErrback(
            lambda f: self.log.failure("listing {name} failed", f, name=name))

    def _retry_soon(self) -> None:
        if self._retry is None and self.running:
            self._retry = self.reactor.callLater(RETRY_PERIOD, self._retry_unlisted)

    def _retry_unlisted(self) -> None:
        self._retry = None
        for name, entry in list(self.unlisted.items()):
            try:
                still = os.stat(self.files.path_of(name), follow_symlinks=False).st_mtime
            except OSError:
                still = None
            if still != entry.mtime:  # deleted or replaced meanwhile: the sweep sees to it
                del self.unlisted[name]
                continue
            self._list_uploaded(name)

    def tell_superseded(self, name: str, old: Entry) -> "Deferred[None]":
        """Ask the daemon of the copy just replaced to delete it now (else its
        next sweep does); never fails."""
        def told(dropped: Any) -> None:
            if dropped:
                self.log.info("{name} now lives here; {daemon} deleted its older copy",
                              name=name, daemon=self.describe(old.holder))

        def not_told(failure: Failure) -> None:
            self.log.info("{name} now lives here; {daemon} deletes its older copy at its "
                          "next sweep ({error})", name=name, daemon=self.describe(old.holder),
                          error=failure.getErrorMessage())

        d = self.connect(name, old).addCallback(
            lambda peer: _closing(peer, peer.request("superseded", name)))
        return d.addCallbacks(told, not_told)

    def drop_if_superseded(self, name: str) -> "Deferred[bool]":
        """Delete this daemon's copy of ``name`` if the directory names another
        daemon's copy that completed no earlier (the sweep's rule, for one name)."""
        def check(entry: Optional[Entry]) -> Any:
            if entry is None or entry.holder == self.me:
                return False

            def drop() -> int:
                try:
                    info = os.stat(self.files.path_of(name), follow_symlinks=False)
                except OSError:
                    return 0
                if entry.mtime < info.st_mtime:
                    return 0  # ours completed later: it gets listed instead
                return self._drop_superseded([(name, (info.st_size, info.st_mtime))])

            def dropped(count: int) -> bool:
                if count:
                    self.log.info("deleted the copy of {name} held here: superseded by the "
                                  "upload completed on {daemon}", name=name,
                                  daemon=self.describe(entry.holder))
                return bool(count)
            return self.files.run_in_thread(drop).addCallback(dropped)
        return self.directory.lookup(name).addCallback(check)

    @inlineCallbacks
    def sweep(self) -> Any:
        """Make the directory's entries of this daemon true to its disk."""
        if self._sweeping:
            return
        self._sweeping = True
        try:
            # The entries first: an upload completing after this read is
            # never taken for a file that vanished.
            entries = yield self.directory.entries()
            local = yield self.files.run_in_thread(
                lambda: {f["name"]: (f["size"], f["mtime"]) for f in self.files.list()})
            plan = plan_sweep(self.me, local, entries, busy=set(self.files.uploading))
            yield gatherResults(
                [self._list_again(name, local[name], only_new=True)
                 for name in plan.register_new]
                + [self._list_again(name, local[name]) for name in plan.register]
                + [self.directory.remove(name) for name in plan.remove], consumeErrors=True)
            superseded = 0
            if plan.superseded:
                superseded = yield self.files.run_in_thread(
                    self._drop_superseded, [(name, local[name]) for name in plan.superseded])
            if not self._swept:
                self._swept = True
                self.log.info("files folder {holder}: {here} files here, {listed} in the "
                              "Redis file directory", holder=self.me, here=len(local),
                              listed=len(entries))
            if plan.register_new or plan.register or plan.remove or superseded:
                self.log.info(
                    "file directory sweep: {new} listed, {updated} updated, {removed} "
                    "unlisted, {superseded} copies superseded elsewhere deleted",
                    new=len(plan.register_new), updated=len(plan.register),
                    removed=len(plan.remove), superseded=superseded)
        except Unavailable:
            pass  # Redis is away (the engine logs it once); the next sweep tries again
        except Exception:
            self.log.failure("the file directory sweep failed")
        finally:
            self._sweeping = False

    def _list_again(self, name: str, figures: tuple[int, float],
                    only_new: bool = False) -> "Deferred[Any]":
        size, mtime = figures
        known = self.unlisted.get(name)
        md5 = known.md5 if known is not None and known.size == size else None
        d = self.directory.register(name, size, md5, mtime, only_new=only_new)

        def done(found: tuple[Optional[Entry], bool]) -> None:
            if found[1]:
                self.unlisted.pop(name, None)
        return d.addCallback(done)

    def _drop_superseded(self, items: list[tuple[str, tuple[int, float]]]) -> int:
        """Delete local copies replaced elsewhere, if unchanged since the scan (in a thread)."""
        dropped = 0
        for name, (size, mtime) in items:
            path = self.files.path_of(name)
            try:
                info = os.stat(path, follow_symlinks=False)
                if (info.st_size, info.st_mtime) != (size, mtime) or name in self.files.uploading:
                    continue
                os.unlink(path)
            except OSError:
                continue
            dropped += 1
        return dropped


class _Relay:
    """A download served from another daemon: what the status page shows of it."""

    def __init__(self, name: str, size: int, offset: int, peer: PeerFileProtocol) -> None:
        self.name = name
        self.size = size
        self.offset = offset
        self.done = offset
        self.peer = peer
        self.sent = False
        self.sender = None
        self.started = time.monotonic()


class SharedFileSession(FileSession):
    """
    One file connection of a daemon on a shared Redis: lists, downloads and
    deletes through the file directory; uploads as on one daemon, then listed.

    :param shared: the daemon's :class:`SharedFiles`.
    """

    def __init__(self, service: FileService, connection: IFileConnection,
                 shared: SharedFiles) -> None:
        super().__init__(service, connection)
        self.shared = shared

    @property
    def from_daemon(self) -> bool:
        """Whether another daemon opened this connection (its own files only, then)."""
        return self.grant is DAEMON_GRANT

    # -- list and delete ---------------------------------------------------------

    @command(0)
    def cmd_list(self) -> Any:
        if self.from_daemon:
            return super().cmd_list()
        grant = self.grant
        return self.shared.directory.entries().addCallback(lambda entries: [
            {"name": name, "size": e.size, "mtime": e.mtime, "md5": e.md5, "holder": e.holder}
            for name, e in sorted(entries.items())
            if _addressable(name) and grant.allows("download", name)])

    @command(1)
    def cmd_delete(self, name: Any) -> Any:
        name = check_file_name(name)
        if self.from_daemon:
            return self._delete_here(name)
        d = self.shared.directory.lookup(name)

        def route(entry: Optional[Entry]) -> Any:
            if entry is None or entry.holder == self.shared.me:
                return self._delete_here(name)
            return self.shared.connect(name, entry).addCallback(
                lambda peer: _closing(peer, peer.request("delete", name)))
        return d.addCallback(route)

    def _delete_here(self, name: str) -> "Deferred[bool]":
        deleted = FileSession.cmd_delete(self, name)
        self.shared.unlisted.pop(name, None)
        # The entry goes too (if it still names this daemon); if Redis is
        # away, the next sweep removes it.
        return self.shared.directory.remove(name).addCallbacks(
            lambda _: deleted, lambda _: deleted)

    # -- upload: as on one daemon, then listed ------------------------------------

    def _upload_kept(self, upload: Any, ours: str) -> Any:
        result = super()._upload_kept(upload, ours)
        return self.shared.uploaded(upload.name, upload.size, ours).addCallback(
            lambda _: result)

    @command(1)
    def cmd_superseded(self, name: Any) -> "Deferred[bool]":
        """(Between daemons) a later upload of ``name`` completed on the daemon
        asking: delete the copy here if the directory agrees."""
        if not self.from_daemon:
            raise BadRequest("superseded is a request between daemons")
        return self.shared.drop_if_superseded(check_file_name(name))

    # -- download ------------------------------------------------------------------

    @command(1, 3, replies_itself=True)
    def cmd_download(self, request_id: int, name: Any, offset: Any = 0,
                     prefix_md5: Any = None) -> Any:
        if self.from_daemon:
            return super().cmd_download(request_id, name, offset, prefix_md5)
        name = check_file_name(name)
        if type(offset) is not int or offset < 0:
            raise BadRequest("download offset must be a non-negative int")
        if prefix_md5 is not None and not isinstance(prefix_md5, str):
            raise BadRequest("download prefix_md5 must be a hex string or nil")
        self._busy()
        self.opening_download = True

        def route(entry: Optional[Entry]) -> Any:
            if entry is None or entry.holder == self.shared.me:
                self.opening_download = False
                return FileSession.cmd_download(self, request_id, name, offset, prefix_md5)
            return self.shared.connect(name, entry).addCallback(
                self._relay, request_id, name, offset, prefix_md5)

        def failed(failure: Failure) -> Failure:
            self.opening_download = False
            return failure

        return self.shared.directory.lookup(name).addCallback(route).addErrback(failed)

    def _relay(self, peer: PeerFileProtocol, request_id: int, name: str, offset: int,
               prefix_md5: Optional[str]) -> "Deferred[object]":
        if self.closed:
            peer.close()
            return REPLIED  # type: ignore[return-value]
        transport = self.connection.transport
        relay: list[_Relay] = []

        def chunk(data: bytes) -> None:
            if not relay:
                return  # the client went first: the connection to the other daemon is aborted
            self._progress()
            self.bytes_sent += len(data) + PREFIX.size
            relay[0].done += len(data)
            transport.writeSequence([PREFIX.pack(len(data)), data])

        def data_end() -> None:
            relay[0].sent = True
            transport.unregisterProducer()
            peer.transport.resumeProducing()  # for the replies that follow

        def header(reply: dict[str, Any]) -> object:
            # Called as the reply is read: the raw frames after it are not yet.
            self.opening_download = False
            if self.closed:  # the client went while the other daemon answered
                peer.transport.abortConnection()
                return REPLIED
            started = _Relay(name, int(reply["size"]), int(reply["offset"]), peer)
            relay.append(started)
            self.download = started  # type: ignore[assignment]  # what status shows
            self.log.info("{peer}: download of {name} relayed from {daemon}, from byte "
                          "{offset} of {size}", peer=self.peer, name=name,
                          daemon=peer.describe, offset=started.offset, size=started.size)
            self.send_reply(request_id, {"name": name, "size": started.size,
                                         "offset": started.offset})
            if not started.sent:
                # A client that does not read stops the reading from the other daemon.
                transport.registerProducer(peer.transport, True)
            peer.lost.addCallback(lambda _: self._peer_lost(started))
            return REPLIED

        def refused(failure: Failure) -> Failure:
            self.opening_download = False
            peer.close()
            return failure

        peer.sink = chunk

        def data_end_once_started() -> None:
            if relay:  # (else the header callback has not run yet: it cannot be)
                data_end()
        peer.on_data_end = data_end_once_started
        d = peer.request("download", name, offset, prefix_md5, data_follows=True)
        return d.addCallbacks(header, refused)

    def _peer_lost(self, relay: _Relay) -> None:
        if self.download is relay and not relay.sent and not self.closed:
            self.log.info("{peer}: the relay of {name} broke off at {done} of {size} bytes: "
                          "{error}", peer=self.peer, name=relay.name, done=relay.done,
                          size=relay.size, error=relay.peer.error)
            self.connection.transport.abortConnection()

    @command(1)
    def cmd_download_end(self, md5_hex: Any) -> Any:
        relay = self.download
        if not isinstance(relay, _Relay):
            return super().cmd_download_end(md5_hex)
        if not relay.sent:
            raise BadRequest("download_end comes after all the data of a download")
        self.download = None

        def done(reply: dict[str, Any]) -> dict[str, Any]:
            seconds = time.monotonic() - relay.started
            self.log.info(
                "{peer}: download of {name} relayed: {size} bytes, md5 {md5} (checked by "
                "{daemon}), {mib_s:.1f} MiB/s", peer=self.peer, name=relay.name,
                size=relay.size, md5=reply.get("md5"), daemon=relay.peer.describe,
                mib_s=(relay.size - relay.offset) / 2**20 / max(seconds, 1e-6))
            return {"md5": reply.get("md5")}

        return _closing(relay.peer, relay.peer.request("download_end", md5_hex)).addCallback(
            done)

    def connection_lost(self) -> None:
        relay = self.download
        if isinstance(relay, _Relay):
            self.download = None
            relay.peer.transport.abortConnection()
        super().connection_lost()


def _describe(holder: str, daemon_id: str, info: dict[str, Any]) -> str:
    return (f"daemon {daemon_id} ({info.get('host', '?')}, "
            f"{' '.join(info.get('listening') or ['no address'])}; files folder {holder})")


def folder_id(folder: str) -> str:
    """
    The id of a files folder (32 hex digits), kept in it as ``.lttx-folder-id``
    (hidden: no plain file name starts with a dot); made the first time.  The
    Redis file directory names files by it, so a daemon restarted on the same
    folder (with a new daemon id) still holds its files.

    :raises ValueError: if the file holds something else.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FOLDER_ID)
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        new = uuid.uuid4().hex
        with open(path + ".new", "w", encoding="ascii") as f:
            f.write(new + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".new", path)
        fsync_directory(folder)
        return new
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{path} does not hold a files folder id (32 hex digits)")
    return text


def _closing(peer: PeerFileProtocol, d: "Deferred[Any]") -> "Deferred[Any]":
    """``d``'s result, the connection to the other daemon closed meanwhile (not
    waited for: the reply does not depend on how the close goes)."""
    def close(result: Any) -> Any:
        peer.close()
        return result
    return d.addBoth(close)


__all__ = ["DAEMON_GRANT", "FOLDER_ID", "SharedFileSession", "SharedFiles", "folder_id"]
