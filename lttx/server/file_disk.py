"""
What a file transfer does on disk, always in the I/O thread: open a file of
the daemon's folder safely (:func:`open_regular`: never through a link, only
a regular file, only in the folder the daemon put it in), open an upload's
partial or a download for resuming, and put a completed upload in place
durably, recording the MD5 the upload was checked against on the file
itself (:func:`record_digest`, an extended attribute) so that a download
of the whole file need not hash it again (:func:`recorded_digest`).
Shared by the command port's file sessions
(:mod:`lttx.server.file_session`) and the original protocol's
(:mod:`lttx.server.legacy.file_mode`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import Any, Optional

from ..diskio import fsync_directory, hash_prefix, sync_file


def open_regular(path: str, flags: int, folder: str) -> Any:
    """
    Open ``path``, a name directly inside the daemon's folder ``folder`` (a
    resolved path), as a binary file object, never through a link.

    ``O_NOFOLLOW`` refuses a symbolic link in place of the file; the folder
    the file is in must resolve to ``folder`` (a ``.partial`` replaced by a
    link to elsewhere is refused); what is opened must be a regular file.
    An upload's partial that is a link is removed (the daemon owns that
    folder) and created afresh.

    :raises FileNotFoundError: for a link, a missing file or not a regular
        file when reading (the caller says "no such file").
    :raises OSError: for a folder that resolves elsewhere (EXDEV).
    """
    if os.path.realpath(os.path.dirname(path)) != folder:
        raise OSError(errno.EXDEV, "the folder resolves outside the daemon's files", path)
    flags |= os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        if not flags & os.O_CREAT:
            raise FileNotFoundError(errno.ENOENT, "a link, not a file", path) from None
        os.unlink(path)  # a link planted as our partial: never write through it
        fd = os.open(path, flags | os.O_EXCL, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", path)
        mode = "r+b" if flags & os.O_RDWR else ("wb" if flags & os.O_WRONLY else "rb")
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def open_partial(path: str, offset: int, prefix_md5: Optional[str],
                 folder: str) -> tuple[Any, Any, int]:
    """
    Open the partial file of an upload (in a thread).

    It resumes at ``offset`` only if the partial holds that many bytes and
    their MD5 is the client's ``prefix_md5``; otherwise it starts afresh.
    """
    if offset > 0 and prefix_md5:
        try:
            f = open_regular(path, os.O_RDWR, folder)
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
    return open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, folder), hashlib.md5(), 0


def open_for_download(path: str, offset: int, prefix_md5: Optional[str],
                      folder: str) -> tuple[Any, int, Any, int, Optional[str]]:
    """
    Open a stored file (in a thread); resume at ``offset`` if the prefixes
    agree.  The last item is the MD5 of the whole file recorded when it was
    uploaded, if the file is unchanged since (:func:`recorded_digest`), else
    None (the file is hashed as it is sent).
    """
    f = open_regular(path, os.O_RDONLY, folder)
    try:
        st = os.fstat(f.fileno())
        size, known = st.st_size, recorded_digest(f.fileno(), st)
        md5 = hashlib.md5()
        if 0 < offset <= size and prefix_md5 and hash_prefix(f, offset, md5) == prefix_md5:
            return f, size, md5, offset, known
        return f, size, hashlib.md5(), 0, known
    except BaseException:
        f.close()
        raise


def move_into_place(partial: str, path: str, md5_hex: Optional[str] = None) -> None:
    """Rename a completed partial to its name, durably (in a thread); with
    ``md5_hex`` (the MD5 its upload was checked against), record it first."""
    if md5_hex is not None:
        record_digest(partial, md5_hex)
    os.replace(partial, path)
    fsync_directory(os.path.dirname(path))


#: The extended attribute holding a stored file's MD5: ``"<hex> <size> <mtime_ns>"``.
DIGEST_ATTRIBUTE = "user.lttx.md5"


def record_digest(path: str, md5_hex: str) -> bool:
    """
    Record on ``path`` (an upload's partial, complete and checked) the MD5
    of its bytes, with its size and modification time: a download of the
    whole file then sends this MD5 instead of hashing the file again, while
    the file is unchanged.  Whether it was recorded: a file system without
    user extended attributes (or a platform without them) records nothing,
    and downloads hash the file as they send it.
    """
    if not hasattr(os, "setxattr"):
        return False
    try:
        st = os.stat(path, follow_symlinks=False)
        os.setxattr(path, DIGEST_ATTRIBUTE,
                    f"{md5_hex} {st.st_size} {st.st_mtime_ns}".encode("ascii"),
                    follow_symlinks=False)
    except OSError:  # ENOTSUP, EPERM, ENOSPC for the attribute: nothing recorded
        return False
    return True


def recorded_digest(fd: int, st: os.stat_result) -> Optional[str]:
    """
    The MD5 recorded on the open file ``fd`` by :func:`record_digest`, if
    its size and modification time are still those recorded with it (``st``
    is its ``fstat``); else None.  A file rewritten in place by another
    program has another modification time: it is hashed again.  (Should a
    rewrite keep both, the recorded MD5 fails the client's check loudly, as a
    checksum mismatch; it can never pass other bytes as the file's.)
    """
    if not hasattr(os, "getxattr"):
        return None
    try:
        value = os.getxattr(fd, DIGEST_ATTRIBUTE)
    except OSError:  # none recorded (ENODATA), or no attributes here
        return None
    parts = value.decode("ascii", "replace").split()
    if (len(parts) != 3 or len(parts[0]) != 32 or not _HEX.issuperset(parts[0])
            or parts[1:] != [str(st.st_size), str(st.st_mtime_ns)]):
        return None
    return parts[0]


_HEX = frozenset("0123456789abcdef")


def sync_and_close(file: Any) -> None:
    """Flush a written file to the disk and close it (in a thread)."""
    sync_file(file)
    file.close()
