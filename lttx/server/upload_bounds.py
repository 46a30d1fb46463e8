"""
What uploads may take of the disk (issue 19 finding 5): :class:`UploadBounds`.

- A free-space reserve (``--disk-reserve``): an upload is refused when the
  bytes it would still write, with those every upload in flight will still
  write, would leave less than the reserve free on the file system of the
  files folder, which holds the journal too in the usual layout (both under
  ``--data-dir``).  Uploads cannot take the space variable writes need.
- Partial uploads per owner (``--max-partials``, ``--max-partial-bytes``):
  the interrupted uploads one owner (its token's name under a roles file,
  else its host) started or resumed since the daemon started, counted by
  name and by their declared sizes.  Partials found at start have no owner
  and are removed once stale, as every partial is (:data:`PARTIAL_MAX_AGE`,
  checked every :data:`STALE_SWEEP_INTERVAL`).

Plain Python: the free space is asked of a function passed in (tests give
one of their own; the daemon :func:`free_bytes`).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

from ..errors import LimitExceeded, StorageError

GiB = 1024 ** 3
#: Bytes left free for the journal, uploads may not take them.
DEFAULT_DISK_RESERVE = 1 * GiB
#: Partial uploads one owner may hold, and their declared bytes.
DEFAULT_MAX_PARTIALS = 32
DEFAULT_MAX_PARTIAL_BYTES = 64 * GiB
#: A partial upload untouched this long is abandoned: removed.
PARTIAL_MAX_AGE = 24 * 3600
#: How often the partials are checked for abandoned ones (and once at start).
STALE_SWEEP_INTERVAL = 3600.0


def free_bytes(path: str) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class UploadBounds:
    """
    The reserve and the partial uploads per owner.

    :param reserve: bytes uploads must leave free; 0 for none.
    :param max_partials: partial uploads per owner; 0 for no bound.
    :param max_partial_bytes: their declared bytes per owner; 0 for no bound.
    :param free_space: ``free_space(path)``, the bytes free on its file system.
    """

    def __init__(self, reserve: int = DEFAULT_DISK_RESERVE,
                 max_partials: int = DEFAULT_MAX_PARTIALS,
                 max_partial_bytes: int = DEFAULT_MAX_PARTIAL_BYTES,
                 free_space: Callable[[str], int] = free_bytes) -> None:
        self.reserve = reserve
        self.max_partials = max_partials
        self.max_partial_bytes = max_partial_bytes
        self.free_space = free_space
        #: name -> (owner, declared size) of each partial with a known owner.
        self.partials: dict[str, tuple[str, int]] = {}
        self.refused = 0

    def check(self, directory: str, owner: str, name: str, size: int, offset: int,
              in_flight: int) -> None:
        """
        Whether ``owner`` may upload ``name`` (``size`` bytes, from ``offset``)
        now that uploads in flight will still write ``in_flight`` bytes.

        :raises StorageError: the disk cannot hold it above the reserve.
        :raises LimitExceeded: the owner holds too many partials, or too many bytes.
        """
        try:
            self._check(directory, owner, name, size, offset, in_flight)
        except (StorageError, LimitExceeded):
            self.refused += 1
            raise

    def _check(self, directory: str, owner: str, name: str, size: int, offset: int,
               in_flight: int) -> None:
        needed = size - offset
        available = self.free_space(directory)
        left = available - in_flight - needed
        if needed > available - in_flight:
            raise StorageError(f"disk full: {needed} bytes do not fit in the "
                               f"{max(available - in_flight, 0)} bytes left")
        if self.reserve and left < self.reserve:
            raise StorageError(
                f"an upload of {needed} more bytes would leave {max(left, 0)} bytes free, "
                f"under the daemon's --disk-reserve of {self.reserve} bytes kept for "
                "its journal")
        others = [declared for partial, (who, declared) in self.partials.items()
                  if who == owner and partial != name]
        if self.max_partials and len(others) + 1 > self.max_partials:
            raise LimitExceeded(
                f"{owner} holds {len(others)} partial uploads, the daemon's "
                f"--max-partials: finish or resume one (partials untouched for "
                f"{PARTIAL_MAX_AGE // 3600} h are removed)")
        if self.max_partial_bytes and sum(others) + size > self.max_partial_bytes:
            raise LimitExceeded(
                f"{owner}'s partial uploads would declare {sum(others) + size} bytes, over "
                f"the daemon's --max-partial-bytes of {self.max_partial_bytes}")

    def room(self, directory: str, writing: int) -> Optional[str]:
        """Why writing ``writing`` more bytes now would take the reserve (None: it
        would not), for uploads that do not declare their size (the legacy port)."""
        if not self.reserve:
            return None
        left = self.free_space(directory) - writing
        if left >= self.reserve:
            return None
        self.refused += 1
        return (f"writing {writing} more bytes would leave {max(left, 0)} bytes free, under "
                f"the daemon's --disk-reserve of {self.reserve} bytes kept for its journal")

    def started(self, owner: str, name: str, size: int) -> None:
        """``owner`` now holds the partial of ``name``."""
        self.partials[name] = (owner, size)

    def forget(self, names: Iterable[str]) -> None:
        """These partials are gone (kept as files, discarded, or removed as stale)."""
        for name in names:
            self.partials.pop(name, None)

    def status(self) -> dict[str, int]:
        return {"disk_reserve": self.reserve, "owned_partials": len(self.partials),
                "uploads_refused": self.refused}


__all__ = ["DEFAULT_DISK_RESERVE", "DEFAULT_MAX_PARTIALS", "DEFAULT_MAX_PARTIAL_BYTES",
           "PARTIAL_MAX_AGE", "STALE_SWEEP_INTERVAL", "UploadBounds", "free_bytes"]
