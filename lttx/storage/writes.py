"""
The changes of the durable store: each write validated and encoded as its
journal record first (a value that cannot be journalled is refused before
anything changes), then applied to the :class:`~lttx.state.store.MemoryStore`,
then queued for the journal; and the changes the memory store makes by
itself (expiries) journalled as they happen.

:class:`JournalledWrites` is mixed into
:class:`~lttx.storage.durable.DurableStore`, which provides the journal queue
(``_append``, ``_record``), the copy-on-write hook of a running compaction
(``_preserve``) and the write checks (``_writable``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

from ..state.store import Change, MemoryStore, check_dict_key, check_seconds, check_ttl
from ..wire.codec import Encoder
from ..wire.names import check_variable_name
from .journal import (
    DELETE,
    DICT_CHANGE,
    EXPIRE,
    EXPIRE_AT,
    INCR,
    LIST_APPEND,
    LIST_POP,
    LIST_REMOVE,
    PUT,
    PUT_UNTIL,
    encode_record,
)


class JournalledWrites:
    """Every change of the durable store (a mixin, see the module docstring)."""

    _memory: MemoryStore
    _clock: Any
    _closing: bool
    _failure: Any

    @functools.cached_property
    def _encoder(self) -> Encoder:
        """The records' encoder (a Packer kept for reuse), one per store."""
        return Encoder()

    @property
    def observer(self) -> Optional[Callable[[Change], None]]:
        """Called with each :class:`~lttx.state.store.Change` as it is applied
        in memory (the watch of a later issue), before its journal record is
        written: a watch that must not show what a crash could lose waits
        for the write's reply."""
        return self._memory.observer

    @observer.setter
    def observer(self, observer: Optional[Callable[[Change], None]]) -> None:
        self._memory.observer = observer

    def _writable(self) -> None:
        raise NotImplementedError

    def _preserve(self, name: str, in_place: bool) -> None:
        raise NotImplementedError

    def _append(self, record: bytes, result: Any) -> Any:
        raise NotImplementedError

    def _record(self, record: bytes) -> None:
        raise NotImplementedError

    def _expired(self, name: str) -> None:
        """The memory store removed ``name`` by its expiry: journal it."""
        if not self._closing:
            # Any command may find a variable expired (a read too): its
            # removal is journalled like any change.  While the journal
            # cannot be written, the record waits in the queue with the rest
            # (a later change of the name must not replay onto the old value).
            self._record(encode_record([EXPIRE, name], self._encoder))

    def put(self, name: str, value: Any, if_revision: Optional[int] = None,
            ttl: Optional[float] = None) -> Any:
        self._writable()
        check_variable_name(name)
        # Encoding first: a value that cannot be journalled is refused unapplied.
        if ttl is None:
            record = encode_record([PUT, name, value], self._encoder)
            self._preserve(name, False)
            self._memory.put(name, value, if_revision)
        else:
            deadline = self._clock.seconds() + check_ttl(ttl)
            record = encode_record([PUT_UNTIL, name, value, deadline], self._encoder)
            self._preserve(name, False)
            self._memory.put_until(name, value, deadline, if_revision)
        return self._append(record, None)

    def delete(self, name: str, if_revision: Optional[int] = None) -> Any:
        self._writable()
        self._preserve(check_variable_name(name), False)
        if not self._memory.delete(name, if_revision):
            return False
        return self._append(encode_record([DELETE, name], self._encoder), True)

    def incr(self, name: str, by: Any = 1) -> Any:
        self._writable()
        record = encode_record([INCR, check_variable_name(name), by], self._encoder)
        self._preserve(name, False)
        return self._append(record, self._memory.incr(name, by))

    def expire(self, name: str, seconds: Any) -> Any:
        self._writable()
        seconds = check_seconds(seconds, "expire")
        if not self._memory.exists(check_variable_name(name)):
            return False
        if seconds <= 0:
            self._memory.expire_now(name)  # journalled by _observe
            return self._append(b"", True)
        deadline = self._clock.seconds() + seconds
        self._memory.expire_at(name, deadline)
        return self._append(encode_record([EXPIRE_AT, name, deadline], self._encoder), True)

    def sweep(self, limit: int = 1000) -> int:
        """Remove at most ``limit`` expired variables (see MemoryStore.sweep)."""
        if self._closing or self._failure is not None:
            return 0
        return self._memory.sweep(limit)

    def dict_change(self, name: str, key: Any, value: Any,
                    if_revision: Optional[int] = None) -> Any:
        self._writable()
        record = encode_record([DICT_CHANGE, check_variable_name(name), check_dict_key(key),
                                value], self._encoder)
        self._preserve(name, True)
        self._memory.dict_change(name, key, value, if_revision)
        return self._append(record, None)

    def list_append(self, name: str, item: Any, if_revision: Optional[int] = None) -> Any:
        self._writable()
        record = encode_record([LIST_APPEND, check_variable_name(name), item], self._encoder)
        self._preserve(name, True)
        return self._append(record, self._memory.list_append(name, item, if_revision))

    def list_pop(self, name: str, index: int = -1, if_revision: Optional[int] = None) -> Any:
        self._writable()
        self._preserve(check_variable_name(name), True)
        item = self._memory.list_pop(name, index, if_revision)
        return self._append(encode_record([LIST_POP, name, index], self._encoder), item)

    def list_remove(self, name: str, item: Any, if_revision: Optional[int] = None) -> Any:
        self._writable()
        record = encode_record([LIST_REMOVE, check_variable_name(name), item], self._encoder)
        self._preserve(name, True)
        if not self._memory.list_remove(name, item, if_revision):
            return False
        return self._append(record, True)


__all__ = ["JournalledWrites"]
