"""
The Redis engine's variable store: every variable lives in Redis, so every
daemon on the same Redis sees every other daemon's writes at once.

Layout, under a prefix (``lttx:`` by default):

- ``<prefix>types``, a hash: variable name -> its type (``dict``, ``list``, or
  the Python type name of a scalar: ``int``, ``str``, ``NoneType``...).  It
  says which variables exist (an empty dict or list has no value key, since
  Redis drops empty hashes and lists), gives the count in O(1) (HLEN), the
  names for ``keys`` (HSCAN) and the type for the error messages.
- ``<prefix>v:<name>``, the value: a string (the MessagePack of a scalar), a
  hash (MessagePack of each key -> MessagePack of its value) or a list (one
  item encoding per element).  So ``dict_change``/``get_dict_value`` are one
  HSET/HGET, ``list_append`` an RPUSH, pops at either end an LPOP/RPOP and
  ``get_list_value`` an LINDEX: O(1) in the size of the value.

Each operation is one Lua script (the type check and the change in one atomic
step; a refusal changes nothing) returning the errors
:class:`lttx.store.MemoryStore` raises, with the same messages.

``list_remove`` equality: list items are stored in a *canonical* MessagePack
encoding (dict keys sorted by their encoding, every NaN the same NaN), so two
items are :func:`lttx.store.strict_equal` exactly when their canonical
encodings, with every ``-0.0`` read as ``0.0``, are equal.  An item holding a
``-0.0`` is stored as ``0xC1 len(C) C S`` (0xC1 is never used by MessagePack):
C, the comparison form, then S, the item itself, so the sign of zero survives
and the Lua script compares C.  (Not covered: dicts whose keys are ``1`` in one
and ``True`` or ``1.0`` in the other, which Python's ``==`` mixes up.)

A dict read back whole comes in Redis's hash order, not insertion order.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ...errors import BadRequest, error_from_wire
from ...state.store import MISSING, IVariableStore, check_dict_key, check_index
from ...wire import codec
from ...wire.names import check_variable_name
from .resp import RedisClient, RedisError, Script

_NAN = math.nan
_TAG = 0xC1
_CHUNK = 1000

_HEAD = """
local function typed(want, op)
  local t = redis.call('HGET', KEYS[1], ARGV[1])
  if t and t ~= want then
    return t, redis.error_reply('LTTX wrong_type ' .. op .. ' needs a ' .. want ..
      ', but ' .. ARGV[2] .. ' holds a ' .. t)
  end
  return t, nil
end
local function bounds(n, index)
  local i = tonumber(index)
  if i < -n or i >= n then
    return nil, redis.error_reply('LTTX index index ' .. index .. ' out of range for ' ..
      ARGV[2] .. ' of length ' .. n)
  end
  if i < 0 then i = i + n end
  return i, nil
end
local function remove_at(i, n)
  if i == n - 1 then return redis.call('RPOP', KEYS[2]) end
  if i == 0 then return redis.call('LPOP', KEYS[2]) end
  local v = redis.call('LINDEX', KEYS[2], i)
  -- a marker no item can be (items are MessagePack, or tagged and longer)
  redis.call('LSET', KEYS[2], i, '\\193')
  redis.call('LREM', KEYS[2], 1, '\\193')
  return v
end
"""

PUT = Script(_HEAD + """
redis.call('DEL', KEYS[2])
local tag = ARGV[3]
if tag == 'dict' then
  for i = 4, #ARGV, 1000 do
    redis.call('HSET', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
elseif tag == 'list' then
  for i = 4, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
else
  redis.call('SET', KEYS[2], ARGV[4])
end
redis.call('HSET', KEYS[1], ARGV[1], tag)
return 1
""")

GET = Script(_HEAD + """
local t = redis.call('HGET', KEYS[1], ARGV[1])
if not t then return nil end
if t == 'dict' then return {t, redis.call('HGETALL', KEYS[2])} end
if t == 'list' then return {t, redis.call('LRANGE', KEYS[2], 0, -1)} end
return {t, redis.call('GET', KEYS[2])}
""")

DELETE = Script(_HEAD + """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
""")

DICT_CHANGE = Script(_HEAD + """
local t, err = typed('dict', 'dict_change')
if err then return err end
if not t then redis.call('HSET', KEYS[1], ARGV[1], 'dict') end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
""")

GET_DICT_VALUE = Script(_HEAD + """
local t, err = typed('dict', 'get_dict_value')
if err then return err end
if not t then return nil end
return redis.call('HGET', KEYS[2], ARGV[3])
""")

LIST_APPEND = Script(_HEAD + """
local t, err = typed('list', 'list_append')
if err then return err end
if not t then redis.call('HSET', KEYS[1], ARGV[1], 'list') end
return redis.call('RPUSH', KEYS[2], ARGV[3])
""")

LIST_POP = Script(_HEAD + """
local t, err = typed('list', 'list_pop')
if err then return err end
if not t then return redis.error_reply('LTTX not_found no variable named ' .. ARGV[2]) end
local n = redis.call('LLEN', KEYS[2])
if n == 0 then return redis.error_reply('LTTX index pop from the empty list ' .. ARGV[2]) end
local i, err2 = bounds(n, ARGV[3])
if err2 then return err2 end
return remove_at(i, n)
""")

LIST_REMOVE = Script(_HEAD + """
local t, err = typed('list', 'list_remove')
if err then return err end
if not t then return 0 end
local c = ARGV[3]
local n = redis.call('LLEN', KEYS[2])
local start = 0
while start < n do
  local chunk = redis.call('LRANGE', KEYS[2], start, start + 999)
  for j, s in ipairs(chunk) do
    local cmp = s
    if string.byte(s, 1) == 193 then
      local b1, b2, b3, b4 = string.byte(s, 2, 5)
      cmp = string.sub(s, 6, 5 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4)
    end
    if cmp == c then
      remove_at(start + j - 1, n)
      return 1
    end
  end
  start = start + 1000
end
return 0
""")

GET_LIST_VALUE = Script(_HEAD + """
local t, err = typed('list', 'get_list_value')
if err then return err end
if not t then return redis.error_reply('LTTX not_found no variable named ' .. ARGV[2]) end
local i, err2 = bounds(redis.call('LLEN', KEYS[2]), ARGV[3])
if err2 then return err2 end
return redis.call('LINDEX', KEYS[2], i)
""")

SCRIPTS = (PUT, GET, DELETE, DICT_CHANGE, GET_DICT_VALUE, LIST_APPEND, LIST_POP,
           LIST_REMOVE, GET_LIST_VALUE)


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
    """

    log = Logger()
    engine = "redis"

    def __init__(self, client: RedisClient, prefix: str = "lttx:") -> None:
        self.client = client
        self.prefix = prefix
        self._types = prefix + "types"
        #: The variable count as last read (``len`` must answer at once).
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def refresh(self) -> Deferred[Any]:
        """Read the variable count again (a timer calls this)."""
        def got(n: int) -> None:
            self.count = n
        return self.client.execute("HLEN", self._types).addCallbacks(got, lambda f: None)

    def _run(self, script: Script, name: Any, *args: Any) -> Deferred[Any]:
        check_variable_name(name)
        d = self.client.evalsha(script, [self._types, self.prefix + "v:" + name],
                                [name, repr(name), *args])
        return d.addErrback(_typed_error)

    def status(self) -> dict[str, Any]:
        return {"engine": "redis", "prefix": self.prefix, "variables": self.count,
                **self.client.status()}

    # -- IVariableStore ------------------------------------------------------

    def put(self, name: str, value: Any, if_revision: Any = None,
            ttl: Any = None) -> Any:  # a Deferred
        if if_revision is not None or ttl is not None:
            return _not_yet("put with if_revision or ttl")
        return _call(self._put, name, value)

    def _put(self, name: str, value: Any) -> Deferred[None]:
        tag = _type_tag(value)
        if tag == "dict":
            payload = [b for k, v in value.items() for b in (codec.encode(k), codec.encode(v))]
        elif tag == "list":
            payload = [encode_item(item) for item in value]
        else:
            payload = [codec.encode(value)]
        return self._run(PUT, name, tag, *payload).addCallback(lambda _: None)

    def get(self, name: str, revision: bool = False) -> Any:  # a Deferred
        if revision:
            return _not_yet("get with revision")
        return _call(lambda: self._run(GET, name).addCallback(_decode_value))

    def delete(self, name: str, if_revision: Any = None) -> Any:  # a Deferred
        if if_revision is not None:
            return _not_yet("delete with if_revision")
        return _call(lambda: self._run(DELETE, name).addCallback(bool))

    # Revisions, counters and expiry come to this engine in a later round.

    def incr(self, name: str, by: Any = 1) -> Any:  # a Deferred
        return _not_yet("incr")

    def expire(self, name: str, seconds: Any) -> Any:  # a Deferred
        return _not_yet("expire")

    def ttl(self, name: str) -> Any:  # a Deferred
        return _not_yet("ttl")

    def sweep(self, limit: int = 1000) -> int:
        """Nothing expires on this engine yet."""
        return 0

    def exists(self, name: str) -> Any:  # a Deferred
        return _call(lambda: self.client.execute(
            "HEXISTS", self._types, check_variable_name(name)).addCallback(bool))

    def keys(self, pattern: str = "*") -> Any:  # a Deferred
        return _call(self._keys, pattern)

    @defer.inlineCallbacks
    def _keys(self, pattern: str) -> Any:
        if not isinstance(pattern, str):
            raise BadRequest("a key pattern must be a string")
        # Redis's MATCH and fnmatch agree on * and ?; brackets and escapes
        # differ ([!a] vs [^a]), so those are filtered here only.
        match = [] if "[" in pattern or "\\" in pattern else ["MATCH", pattern]
        names: list[str] = []
        cursor = b"0"
        while True:
            cursor, found = yield self.client.execute(
                "HSCAN", self._types, cursor, *match, "COUNT", 1000)
            names.extend(found[i].decode("utf-8") for i in range(0, len(found), 2))
            if cursor == b"0":
                break
        return sorted(n for n in set(names) if fnmatch.fnmatchcase(n, pattern))

    def dict_change(self, name: str, key: Any, value: Any,
                    if_revision: Any = None) -> Any:  # a Deferred
        if if_revision is not None:
            return _not_yet("dict_change with if_revision")
        return _call(lambda: self._run(
            DICT_CHANGE, name, codec.encode(check_dict_key(key)), codec.encode(value)
        ).addCallback(lambda _: None))

    def get_dict_value(self, name: str, key: Any) -> Any:  # a Deferred
        return _call(lambda: self._run(
            GET_DICT_VALUE, name, codec.encode(check_dict_key(key))
        ).addCallback(lambda data: MISSING if data is None else codec.decode(data)))

    def list_append(self, name: str, item: Any, if_revision: Any = None) -> Any:  # a Deferred
        if if_revision is not None:
            return _not_yet("list_append with if_revision")
        return _call(lambda: self._run(LIST_APPEND, name, encode_item(item)))

    def list_pop(self, name: str, index: int = -1, if_revision: Any = None) -> Any:  # a Deferred
        if if_revision is not None:
            return _not_yet("list_pop with if_revision")
        return _call(lambda: self._run(LIST_POP, name, check_index(index)).addCallback(
            decode_item))

    def list_remove(self, name: str, item: Any, if_revision: Any = None) -> Any:  # a Deferred
        if if_revision is not None:
            return _not_yet("list_remove with if_revision")
        return _call(lambda: self._run(LIST_REMOVE, name, compare_form(item)).addCallback(
            bool))

    def get_list_value(self, name: str, index: int) -> Any:  # a Deferred
        return _call(lambda: self._run(GET_LIST_VALUE, name, check_index(index)).addCallback(
            decode_item))


def _not_yet(what: str) -> Deferred[Any]:
    return defer.fail(BadRequest(f"{what} is not supported by the redis engine yet"))


def _call(f: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
    # Argument checks raise synchronously; every refusal is a failed Deferred.
    return defer.maybeDeferred(f, *args)


def _typed_error(failure: Failure) -> Failure:
    """``LTTX <code> <message>`` from a script -> the LTtx error it stands for."""
    error = failure.value
    if isinstance(error, RedisError) and error.kind == "LTTX":
        _, code, message = error.message.split(" ", 2)
        return Failure(error_from_wire(code, message))
    return failure


def _decode_value(reply: Any) -> Any:
    if reply is None:
        return MISSING
    tag, data = reply
    if tag == b"dict":
        return {codec.decode(data[i]): codec.decode(data[i + 1]) for i in range(0, len(data), 2)}
    if tag == b"list":
        return [decode_item(item) for item in data]
    return codec.decode(data)
