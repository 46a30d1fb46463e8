"""
The Redis engine's variable store: every variable lives in Redis, so every
daemon on the same Redis sees every other daemon's writes at once.

Layout, under a prefix (``lttx:`` by default):

- ``<prefix>types``, a hash: variable name -> its type (``dict``, ``list``, or
  the Python type name of a scalar: ``int``, ``str``, ``NoneType``...).  It
  says which variables exist (an empty dict or list has no value key, since
  Redis drops empty hashes and lists), gives the count in O(1) (HLEN), the
  names for ``keys`` (HSCAN) and the type for the error messages.
- ``<prefix>revisions``, a hash: name -> revision; ``<prefix>top``, the
  highest revision given; ``<prefix>expiry``, a sorted set of the names that
  expire, scored by their deadline (ms since the epoch), the value key
  carrying the same deadline as its Redis expiry (see :mod:`.scripts`).
- ``<prefix>v:<name>``, the value: a string (the MessagePack of a scalar), a
  hash (MessagePack of each key -> MessagePack of its value) or a list (one
  item encoding per element).  So ``dict_change``/``get_dict_value`` are one
  HSET/HGET, ``list_append`` an RPUSH, pops at either end an LPOP/RPOP and
  ``get_list_value`` an LINDEX: O(1) in the size of the value.
- ``<prefix>changes``, a stream: every change, written by the script that
  makes it (:mod:`.scripts`), with ``<prefix>changes:epoch``; each daemon's
  :class:`~lttx.engines.redis.changes.ChangeFeed` reads it for its watchers.

Each operation is one Lua script (:mod:`.scripts`: the expiry, type and
revision checks, the change and its entry in the change stream in one atomic
step; a refusal changes nothing) returning the errors
:class:`lttx.store.MemoryStore` raises, with the same messages.

A write's reply waits, besides its script, for what the engine asks
(:meth:`RedisStore._settle`): the daemon's change feed, if it runs, to have
read the change (a watcher or mirror of the writing client has it before
the reply, as on one daemon), and, with ``--redis-wait``, the replicas'
acknowledgement (:mod:`.replication`).

``list_remove`` equality: list items are stored in a *canonical* MessagePack
encoding (dict keys sorted by their encoding, every NaN the same NaN), so two
items are :func:`lttx.store.strict_equal` exactly when their canonical
encodings, with every ``-0.0`` read as ``0.0``, are equal.  An item holding a
``-0.0`` is stored as ``0xC1 len(C) C S`` (0xC1 is never used by MessagePack):
C, the comparison form, then S, the item itself, so the sign of zero survives
and the Lua script compares C.  Dicts whose keys are ``1`` in one and ``1.0``
in the other differ here as in :func:`~lttx.state.store.strict_equal` (their
keys encode differently); bool keys are refused before a value is kept
(:func:`lttx.wire.limits.check_nesting`).

A dict read back whole comes in Redis's hash order, not insertion order.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ...errors import BadRequest, error_from_wire
from ...state.store import (
    INT_MAX,
    INT_MIN,
    MISSING,
    IVariableStore,
    check_dict_key,
    check_index,
    check_revision,
    check_seconds,
    check_ttl,
)
from ...state.patterns import MAX_KEYS, check_pattern, select, too_many
from ...wire import codec
from ...wire.names import check_variable_name
from .resp import RedisClient, RedisError, Script
from .scripts import (
    DELETE,
    FEED_START,
    DICT_CHANGE,
    EXISTS,
    EXPIRE,
    GET,
    GET_DICT_VALUE,
    GET_LIST_VALUE,
    INCR,
    LIST_APPEND,
    LIST_POP,
    LIST_REMOVE,
    PUT,
    SCRIPTS,
    SWEEP,
    TTL,
)

_NAN = math.nan
_TAG = 0xC1
_CHUNK = 1000

#: Changes the Redis stream keeps per byte of ``--channel-history`` (about
#: 256 bytes per change: ``--channel-history 64MiB`` keeps ~262,000 changes).
CHANGE_BYTES = 256


def changes_maxlen(history_bytes: int) -> int:
    """The change stream's approximate MAXLEN for ``--channel-history`` bytes."""
    return max(1024, history_bytes // CHANGE_BYTES)


def seq_of(entry_id: bytes) -> int:
    """The seq of a change stream entry id (``0-<seq>``)."""
    return int(entry_id[2:])


def _canonical(value: Any, zero: bool) -> Any:
    """``value`` with dict keys in the order of their encodings and one NaN;
    with ``zero``, every ``-0.0`` as ``0.0`` too (the comparison form)."""
    kind = type(value)
    if kind is dict:
        items = sorted(((codec.encode(k), k, v) for k, v in value.items()),
                       key=lambda item: item[0])
        return {k: _canonical(v, zero) for _, k, v in items}
    if kind is list:
        return [_canonical(v, zero) for v in value]
    if kind is float:
        if value != value:
            return _NAN
        if zero and value == 0.0:
            return 0.0
    return value


def encode_item(item: Any) -> bytes:
    """A list item as stored: its canonical encoding, tagged if it holds a -0.0."""
    if type(item) in (str, bytes, int, bool, type(None)):
        return codec.encode(item)
    stored = codec.encode(_canonical(item, False))
    compared = codec.encode(_canonical(item, True))
    if stored == compared:
        return stored
    return bytes([_TAG]) + len(compared).to_bytes(4, "big") + compared + stored


def compare_form(item: Any) -> bytes:
    """What ``list_remove`` compares stored items with."""
    if type(item) in (str, bytes, int, bool, type(None)):
        return codec.encode(item)
    return codec.encode(_canonical(item, True))


def decode_item(data: bytes) -> Any:
    if data[0] == _TAG:
        return codec.decode(data[5 + int.from_bytes(data[1:5], "big"):])
    return codec.decode(data)


def _type_tag(value: Any) -> str:
    names: dict[type, str] = {dict: "dict", list: "list"}
    return names.get(type(value), type(value).__name__)


@implementer(IVariableStore)
class RedisStore:
    """
    Variables in Redis; every method returns a Deferred.

    :param client: a connected-or-connecting :class:`RedisClient` whose
        ``scripts`` include :data:`SCRIPTS` (loaded on each connection).
    :param clock: the wall clock (seconds since the epoch) deadlines are
        measured on; every daemon on one Redis must keep its clock in sync
        (NTP), as for any lease.
    """

    log = Logger()
    engine = "redis"

    #: Never called: the changes reach the watchers through the change
    #: stream (:mod:`.changes`); its presence gives ``status`` its "watch".
    observer: Optional[Callable[[Any], None]] = None

    def __init__(self, client: RedisClient, prefix: str = "lttx:",
                 clock: Callable[[], float] = time.time,
                 maxlen: int = changes_maxlen(64 * 1024 * 1024)) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        #: The change stream's approximate MAXLEN (``XADD MAXLEN ~``).
        self.maxlen = maxlen
        self._types = prefix + "types"
        #: The change stream and its epoch key.
        self.changes_keys = (prefix + "changes", prefix + "changes:epoch")
        self._keys = [self._types, "", prefix + "revisions", prefix + "expiry", prefix + "top",
                      *self.changes_keys]
        #: The daemon's change feed (``reached(seq)``), once it runs; None:
        #: nobody watches here, a write's reply waits for no reading.
        self.feed: Optional[Any] = None
        #: ``--redis-wait``: the replication waiter (``confirm()``), or None.
        self.replication: Optional[Any] = None
        #: The variable count as last read (``len`` must answer at once).
        self.count = 0
        #: The count of variables with an expiry, as last read.
        self.expiring = 0

    def __len__(self) -> int:
        return self.count

    def refresh(self) -> Deferred[Any]:
        """Read the variable counts again (a timer calls this)."""
        def got(counts: list[int]) -> None:
            self.count, self.expiring = counts
        d = defer.gatherResults([self.client.execute("HLEN", self._types),
                                 self.client.execute("ZCARD", self._keys[3])],
                                consumeErrors=True)
        return d.addCallbacks(got, lambda f: None)

    def _now(self) -> int:
        return round(self.clock() * 1000)

    def _run(self, script: Script, name: Any, *args: Any, if_revision: Any = None,
             write: bool = False) -> Any:
        check_variable_name(name)
        keys = list(self._keys)
        keys[1] = self.prefix + "v:" + name
        expected = "" if check_revision(if_revision) is None else if_revision
        d = self.client.evalsha(script, keys, [name, repr(name), self._now(), expected,
                                               self.maxlen, *args])
        return d.addCallbacks(self._settle, _typed_error, callbackArgs=(write,))

    def _settle(self, reply: list[Any], write: bool) -> Any:
        """
        A script's ``[result, id]``: the result, once a write that changed
        something is read by this daemon's change feed (if it runs) and
        confirmed by the replicas (with ``--redis-wait``).

        Called as the reply arrives, so a confirmation asked here is asked on
        the connection that made the write (:mod:`.replication`).
        """
        result, recorded = reply
        if not write or recorded is None:
            return result
        waits = []
        if self.feed is not None:
            read = self.feed.reached(seq_of(recorded))
            if read is not None:
                waits.append(read)
        if self.replication is not None:
            waits.append(self.replication.confirm())
        if not waits:
            return result
        if len(waits) == 1:
            return waits[0].addCallback(lambda _: result)
        return defer.gatherResults(waits, consumeErrors=True).addCallbacks(
            lambda _: result, _first_error)

    def status(self) -> dict[str, Any]:
        status = {"engine": "redis", "prefix": self.prefix, "variables": self.count,
                  "expiring": self.expiring, **self.client.status()}
        if self.feed is not None:
            status["changes"] = self.feed.status()
        if self.replication is not None:
            status["replication_wait"] = self.replication.status()
        return status

    # -- IVariableStore ------------------------------------------------------

    def put(self, name: str, value: Any, if_revision: Any = None,
            ttl: Any = None) -> Any:  # a Deferred
        return _call(self._put, name, value, if_revision, ttl)

    def _put(self, name: str, value: Any, if_revision: Any, ttl: Any) -> Deferred[None]:
        deadline = "" if ttl is None else round((self.clock() + check_ttl(ttl)) * 1000)
        tag = _type_tag(value)
        if tag == "dict":
            payload = [b for k, v in value.items() for b in (codec.encode(k), codec.encode(v))]
        elif tag == "list":
            payload = [encode_item(item) for item in value]
        else:
            payload = [codec.encode(value)]
        return self._run(PUT, name, tag, deadline, *payload,
                         if_revision=if_revision, write=True).addCallback(lambda _: None)

    def get(self, name: str, revision: bool = False) -> Any:  # a Deferred
        decode = _decode_with_revision if revision else _decode_value
        return _call(lambda: self._run(GET, name).addCallback(decode))

    def delete(self, name: str, if_revision: Any = None) -> Any:  # a Deferred
        return _call(lambda: self._run(DELETE, name, if_revision=if_revision,
                                       write=True).addCallback(bool))

    def exists(self, name: str) -> Any:  # a Deferred
        return _call(lambda: self._run(EXISTS, name).addCallback(bool))

    def incr(self, name: str, by: Any = 1) -> Any:  # a Deferred
        return _call(self._incr, name, by)

    def _incr(self, name: str, by: Any) -> Deferred[Any]:
        if type(by) is int:
            if not INT_MIN <= by <= INT_MAX:
                raise BadRequest(f"incr of {name!r} would overflow a 64-bit integer")
            amount = ["int", by >> 32, by & 0xFFFFFFFF]
        elif type(by) is float:
            amount = ["float", repr(by), ""]
        else:
            raise BadRequest(f"incr needs an int or float amount, not {type(by).__name__}")
        return self._run(INCR, name, *amount, write=True).addCallback(codec.decode)

    def expire(self, name: str, seconds: Any) -> Any:  # a Deferred
        return _call(self._expire, name, seconds)

    def _expire(self, name: str, seconds: Any) -> Deferred[Any]:
        seconds = check_seconds(seconds, "expire")
        deadline = round((self.clock() + seconds) * 1000)
        return self._run(EXPIRE, name, deadline, "1" if seconds <= 0 else "",
                         write=True).addCallback(bool)

    def ttl(self, name: str) -> Any:  # a Deferred
        return _call(lambda: self._run(TTL, name).addCallback(
            lambda ms: None if ms is None else max(0.0, ms / 1000)))

    def sweep(self, limit: int = 1000) -> Any:  # a Deferred
        """Remove at most ``limit`` expired variables (any daemon may; each once)."""
        keys = list(self._keys)
        keys[1] = self.prefix + "v:"
        d = self.client.evalsha(SWEEP, keys, [self.prefix + "v:", "", self._now(), "",
                                              self.maxlen, int(limit)])
        return d.addCallback(lambda reply: reply[0])

    def keys(self, pattern: str = "*") -> Any:  # a Deferred
        return _call(self._scan, pattern)

    @defer.inlineCallbacks
    def _scan(self, pattern: str) -> Any:
        check_pattern(pattern)
        # Redis's MATCH and fnmatch agree on * and ?; brackets and escapes
        # differ ([!a] vs [^a]), so those are filtered here only.
        match = [] if "[" in pattern or "\\" in pattern else ["MATCH", pattern]
        names: list[str] = []
        cursor = b"0"
        while True:
            cursor, found = yield self.client.execute(
                "HSCAN", self._types, cursor, *match, "COUNT", 1000)
            names.extend(found[i].decode("utf-8") for i in range(0, len(found), 2))
            if len(names) > MAX_KEYS and match:
                raise too_many()
            if cursor == b"0":
                break
        # Expired but not yet swept: gone for keys too.
        due = yield self.client.execute("ZRANGEBYSCORE", self._keys[3], "-inf", self._now())
        expired = {n.decode("utf-8") for n in due}
        return select(list(set(names) - expired), pattern)

    def dict_change(self, name: str, key: Any, value: Any,
                    if_revision: Any = None) -> Any:  # a Deferred
        return _call(lambda: self._run(
            DICT_CHANGE, name, codec.encode(check_dict_key(key)), codec.encode(value),
            if_revision=if_revision, write=True).addCallback(lambda _: None))

    def get_dict_value(self, name: str, key: Any) -> Any:  # a Deferred
        return _call(lambda: self._run(
            GET_DICT_VALUE, name, codec.encode(check_dict_key(key))
        ).addCallback(lambda data: MISSING if data is None else codec.decode(data)))

    def list_append(self, name: str, item: Any, if_revision: Any = None) -> Any:  # a Deferred
        return _call(lambda: self._run(LIST_APPEND, name, encode_item(item),
                                       if_revision=if_revision, write=True))

    def list_pop(self, name: str, index: int = -1, if_revision: Any = None) -> Any:  # a Deferred
        return _call(lambda: self._run(LIST_POP, name, check_index(index), codec.encode(index),
                                       if_revision=if_revision, write=True
                                       ).addCallback(decode_item))

    def list_remove(self, name: str, item: Any, if_revision: Any = None) -> Any:  # a Deferred
        return _call(lambda: self._run(LIST_REMOVE, name, compare_form(item),
                                       if_revision=if_revision, write=True).addCallback(bool))

    def get_list_value(self, name: str, index: int) -> Any:  # a Deferred
        return _call(lambda: self._run(GET_LIST_VALUE, name, check_index(index)).addCallback(
            decode_item))


def _call(f: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
    # Argument checks raise synchronously; every refusal is a failed Deferred.
    return defer.maybeDeferred(f, *args)


def _first_error(failure: Failure) -> Failure:
    """The failure inside a ``gatherResults``'s ``FirstError``."""
    if isinstance(failure.value, defer.FirstError):
        return failure.value.subFailure  # type: ignore[no-any-return]
    return failure


def _typed_error(failure: Failure) -> Failure:
    """``LTTX <code> <message>`` from a script -> the LTtx error it stands for."""
    error = failure.value
    if isinstance(error, RedisError) and error.kind == "LTTX":
        _, code, message = error.message.split(" ", 2)
        return Failure(error_from_wire(code, message))
    return failure


def _decode_with_revision(reply: Any) -> tuple[Any, int]:
    if reply is None:
        return MISSING, 0
    return _decode_value(reply), int(reply[2])


def _decode_value(reply: Any) -> Any:
    if reply is None:
        return MISSING
    tag, data = reply[0], reply[1]
    if tag == b"dict":
        return {codec.decode(data[i]): codec.decode(data[i + 1]) for i in range(0, len(data), 2)}
    if tag == b"list":
        return [decode_item(item) for item in data]
    return codec.decode(data)


__all__ = ["FEED_START", "RedisStore", "SCRIPTS", "changes_maxlen", "compare_form",
           "decode_item", "encode_item", "seq_of"]
