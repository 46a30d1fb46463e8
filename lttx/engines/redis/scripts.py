"""
The Lua scripts of the Redis store (:mod:`lttx.engines.redis.store`), one
per operation, each atomic: the expiry check, the type check, the revision
check, the change and its entry in the change stream happen in one step, and
a refusal changes nothing.

Every script gets the same keys and the same first arguments:

- ``KEYS[1]`` the types hash (name -> type tag), ``KEYS[2]`` the variable's
  value key, ``KEYS[3]`` the revisions hash (name -> revision), ``KEYS[4]``
  the expiry sorted set (name scored by its deadline in ms since the epoch),
  ``KEYS[5]`` the top revision (a string counter), ``KEYS[6]`` the change
  stream, ``KEYS[7]`` the change stream's epoch;
- ``ARGV[1]`` the name, ``ARGV[2]`` its repr (for messages), ``ARGV[3]`` the
  daemon's wall-clock time in ms, ``ARGV[4]`` the ``if_revision`` to check or
  ``''``, ``ARGV[5]`` the change stream's approximate MAXLEN; the
  operation's own arguments from ``ARGV[6]`` on.

Each script returns ``{result, id}``: its result (nil as false) and the id
of the last entry it added to the change stream (false if it changed
nothing); an error reply comes alone.

Revisions follow :mod:`lttx.state.store`: one more per change; a variable
created starts one above the top.  A variable written by a daemon of the
previous version (no revision yet) is given one when first asked.

The change stream (:mod:`lttx.engines.redis.changes` reads it): every
change, expiries and deletes included, is one entry ``0-<seq>`` (``XADD
0-*``: the seqs are consecutive, the stream is its own counter) with the
fields ``n``, the variable's name, and ``c``, the MessagePack of ``[op,
args, revision]`` exactly as a watcher gets it (the value's own encoding,
never decoded here).  A stream that does not exist yet is made with a new
epoch (``KEYS[7]``, the Redis clock in microseconds) and a marker entry
``0-1`` with an empty name, so the seqs of an epoch start at 2 and a stream
lost (a Redis restarted empty, a FLUSHALL) always comes back with another
epoch: no seq is ever reused within one.

Expiry: the value key carries the deadline as its own Redis expiry
(PEXPIREAT), so Redis frees the memory even if no daemon runs; the sorted set
says which variables expire when, so each script removes an expired variable
it touches (a change, with its revision), the sweep removes the others, and
an empty dict or list (no value key) expires too.  A scalar whose value key
Redis already removed counts as expired (the daemons' clocks run a little
behind Redis's).
"""

from __future__ import annotations

from .resp import Script

import msgpack


def _lua(data: bytes) -> str:
    """``data`` as a Lua string literal (decimal escapes: any byte is safe)."""
    return "'" + "".join(f"\\{b}" for b in data) + "'"


def _op(op: str) -> str:
    """The MessagePack of an op name, as a Lua literal."""
    return _lua(msgpack.packb(op))


#: Prefixes every script: the shared helpers, ``changed`` (one change into the
#: stream), and the ``recorded`` id each script returns beside its result.
_HEAD = """
local now = tonumber(ARGV[3])
local recorded = false
local W = 4294967296
local function top()
  return tonumber(redis.call('GET', KEYS[5]) or '0')
end
local function head(n, small, h16, h32)
  if n < 16 then return string.char(small + n) end
  if n < 65536 then return h16 .. struct.pack('>H', n) end
  return h32 .. struct.pack('>I4', n)
end
local function array_head(n) return head(n, 144, '\\220', '\\221') end
local function map_head(n) return head(n, 128, '\\222', '\\223') end
local function int64(v)
  local hi = math.floor(v / W)
  return '\\211' .. struct.pack('>i4>I4', hi, v - hi * W)
end
local function changes_begin()
  if redis.call('EXISTS', KEYS[6]) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[7], t[1] .. string.format('%06d', tonumber(t[2])))
    redis.call('XADD', KEYS[6], '0-1', 'n', '', 'c', '')
  end
end
-- op_args: the MessagePack of the op, then of its args array
local function changed(name, op_args, rev)
  changes_begin()
  recorded = redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '0-*', 'n', name,
                        'c', '\\147' .. op_args .. int64(rev))
end
-- a stored list item as the item itself (see store.py: a -0.0 is tagged)
local function item_of(s)
  if string.byte(s, 1) ~= 193 then return s end
  local b1, b2, b3, b4 = string.byte(s, 2, 5)
  return string.sub(s, 6 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4)
end
local function revision_of(name, t)
  if not t then return 0 end
  local r = redis.call('HGET', KEYS[3], name)
  if r then return tonumber(r) end
  local rev = redis.call('INCR', KEYS[5])  -- written before revisions: one now
  redis.call('HSET', KEYS[3], name, rev)
  return rev
end
local function bump_of(name, t)
  local rev
  if t then rev = revision_of(name, t) + 1 else rev = top() + 1 end
  redis.call('HSET', KEYS[3], name, rev)
  if rev > top() then redis.call('SET', KEYS[5], rev) end
  return rev
end
local function remove(name, key, t, op)
  local rev = bump_of(name, t)
  redis.call('HDEL', KEYS[1], name)
  redis.call('HDEL', KEYS[3], name)
  redis.call('ZREM', KEYS[4], name)
  redis.call('DEL', key)
  changed(name, op .. '\\144', rev)
  return rev
end
local function live()
  local t = redis.call('HGET', KEYS[1], ARGV[1])
  if not t then return nil, nil end
  local d = redis.call('ZSCORE', KEYS[4], ARGV[1])
  if d then
    if tonumber(d) <= now or (t ~= 'dict' and t ~= 'list'
        and redis.call('EXISTS', KEYS[2]) == 0) then
      remove(ARGV[1], KEYS[2], t, """ + _op("expire") + """)
      return nil, nil
    end
  end
  return t, d
end
local function revision(t) return revision_of(ARGV[1], t) end
local function bump(t) return bump_of(ARGV[1], t) end
local function check(t)
  if ARGV[4] == '' then return nil end
  local want = tonumber(ARGV[4])
  local cur = revision(t)
  if cur == want then return nil end
  local name = ARGV[2]
  if want == 0 then
    return redis.error_reply('LTTX conflict ' .. name .. ' exists (revision ' .. cur ..
      '); if_revision=0 needs it absent')
  end
  if cur == 0 then
    return redis.error_reply('LTTX conflict ' .. name .. ' does not exist; if_revision=' ..
      ARGV[4])
  end
  return redis.error_reply('LTTX conflict ' .. name .. ' is at revision ' .. cur ..
    ', not ' .. ARGV[4])
end
local function keep_expiry(d)
  if d then redis.call('PEXPIREAT', KEYS[2], d) end
end
local function typed(want, op)
  local t, d = live()
  if t and t ~= want then
    return t, d, redis.error_reply('LTTX wrong_type ' .. op .. ' needs a ' .. want ..
      ', but ' .. ARGV[2] .. ' holds a ' .. t)
  end
  return t, d, nil
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
local function main()
"""

_TAIL = """
end
local result = main()
if type(result) == 'table' and result.err then return result end
if result == nil then result = false end
return {result, recorded}
"""


def _script(body: str) -> Script:
    return Script(_HEAD + body + _TAIL)


# ARGV[6]: the type tag, ARGV[7]: the deadline in ms or '', ARGV[8...]: the value.
PUT = _script("""
local t = live()
local err = check(t)
if err then return err end
redis.call('DEL', KEYS[2])
local tag = ARGV[6]
local value
if tag == 'dict' then
  for i = 8, #ARGV, 1000 do
    redis.call('HSET', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  value = map_head((#ARGV - 7) / 2) .. table.concat(ARGV, '', 8)
elseif tag == 'list' then
  local items = {}
  for i = 8, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  for i = 8, #ARGV do items[i - 7] = item_of(ARGV[i]) end
  value = array_head(#ARGV - 7) .. table.concat(items)
else
  redis.call('SET', KEYS[2], ARGV[8])
  value = ARGV[8]
end
redis.call('HSET', KEYS[1], ARGV[1], tag)
if ARGV[7] == '' then
  redis.call('ZREM', KEYS[4], ARGV[1])
else
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
  keep_expiry(ARGV[7])
end
local rev = bump(t)
changed(ARGV[1], """ + _op("put") + """ .. '\\145' .. value, rev)
return rev
""")

GET = _script("""
local t = live()
if not t then return nil end
local rev = revision(t)
if t == 'dict' then return {t, redis.call('HGETALL', KEYS[2]), rev} end
if t == 'list' then return {t, redis.call('LRANGE', KEYS[2], 0, -1), rev} end
return {t, redis.call('GET', KEYS[2]), rev}
""")

EXISTS = _script("""
if live() then return 1 end
return 0
""")

DELETE = _script("""
local t = live()
local err = check(t)
if err then return err end
if not t then return 0 end
remove(ARGV[1], KEYS[2], t, """ + _op("delete") + """)
return 1
""")

DICT_CHANGE = _script("""
local t, d, err = typed('dict', 'dict_change')
if err then return err end
err = check(t)
if err then return err end
if not t then redis.call('HSET', KEYS[1], ARGV[1], 'dict') end
redis.call('HSET', KEYS[2], ARGV[6], ARGV[7])
keep_expiry(d)
local rev = bump(t)
changed(ARGV[1], """ + _op("dict_change") + """ .. '\\146' .. ARGV[6] .. ARGV[7], rev)
return rev
""")

GET_DICT_VALUE = _script("""
local t, d, err = typed('dict', 'get_dict_value')
if err then return err end
if not t then return nil end
return redis.call('HGET', KEYS[2], ARGV[6])
""")

LIST_APPEND = _script("""
local t, d, err = typed('list', 'list_append')
if err then return err end
err = check(t)
if err then return err end
if not t then redis.call('HSET', KEYS[1], ARGV[1], 'list') end
local n = redis.call('RPUSH', KEYS[2], ARGV[6])
keep_expiry(d)
changed(ARGV[1], """ + _op("list_append") + """ .. '\\145' .. item_of(ARGV[6]), bump(t))
return n
""")

# ARGV[6]: the index as given, ARGV[7]: its MessagePack (for the change).
LIST_POP = _script("""
local t, d, err = typed('list', 'list_pop')
if err then return err end
if not t then return redis.error_reply('LTTX not_found no variable named ' .. ARGV[2]) end
err = check(t)
if err then return err end
local n = redis.call('LLEN', KEYS[2])
if n == 0 then return redis.error_reply('LTTX index pop from the empty list ' .. ARGV[2]) end
local i, err2 = bounds(n, ARGV[6])
if err2 then return err2 end
local item = remove_at(i, n)
changed(ARGV[1], """ + _op("list_pop") + """ .. '\\145' .. ARGV[7], bump(t))
return item
""")

LIST_REMOVE = _script("""
local t, d, err = typed('list', 'list_remove')
if err then return err end
err = check(t)
if err then return err end
if not t then return 0 end
local c = ARGV[6]
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
      changed(ARGV[1], """ + _op("list_remove") + """ .. '\\145' .. item_of(s), bump(t))
      return 1
    end
  end
  start = start + 1000
end
return 0
""")

GET_LIST_VALUE = _script("""
local t, d, err = typed('list', 'get_list_value')
if err then return err end
if not t then return redis.error_reply('LTTX not_found no variable named ' .. ARGV[2]) end
local i, err2 = bounds(redis.call('LLEN', KEYS[2]), ARGV[6])
if err2 then return err2 end
return redis.call('LINDEX', KEYS[2], i)
""")

# incr: 64-bit integers as two halves (value = hi * 2^32 + lo, 0 <= lo < 2^32),
# each exact in a Lua double.  ARGV[6]: 'int' or 'float'; ARGV[7], ARGV[8]:
# the amount's hi and lo (an int), or ARGV[7] its repr (a float).
INCR = _script("""
local t, d = live()
if t and t ~= 'int' and t ~= 'float' then
  return redis.error_reply('LTTX wrong_type incr needs an int or float, but ' .. ARGV[2] ..
    ' holds a ' .. t)
end
local function halves(v)
  if v >= 0 then return 0, v end
  return -1, v + W
end
local kind, hi, lo, f = 'int', 0, 0, 0
if t then
  local s = redis.call('GET', KEYS[2])
  local b = string.byte(s, 1)
  if b <= 0x7f then hi, lo = 0, b
  elseif b >= 0xe0 then hi, lo = halves(b - 256)
  elseif b == 0xcc then hi, lo = 0, string.byte(s, 2)
  elseif b == 0xcd then hi, lo = 0, struct.unpack('>H', s, 2)
  elseif b == 0xce then hi, lo = 0, struct.unpack('>I4', s, 2)
  elseif b == 0xcf then hi, lo = struct.unpack('>I4>I4', s, 2)
  elseif b == 0xd0 then hi, lo = halves(struct.unpack('>b', s, 2))
  elseif b == 0xd1 then hi, lo = halves(struct.unpack('>h', s, 2))
  elseif b == 0xd2 then hi, lo = halves(struct.unpack('>i4', s, 2))
  elseif b == 0xd3 then hi, lo = struct.unpack('>i4>I4', s, 2)
  elseif b == 0xca then kind, f = 'float', struct.unpack('>f', s, 2)
  elseif b == 0xcb then kind, f = 'float', struct.unpack('>d', s, 2)
  end
end
local out, tag
if kind == 'int' and ARGV[6] == 'int' then
  lo = lo + tonumber(ARGV[8])
  local carry = math.floor(lo / W)
  lo = lo - carry * W
  hi = hi + tonumber(ARGV[7]) + carry
  if hi < -2147483648 or hi > 2147483647 then
    return redis.error_reply('LTTX bad_request incr of ' .. ARGV[2] ..
      ' would overflow a 64-bit integer')
  end
  out, tag = '\\211' .. struct.pack('>i4>I4', hi, lo), 'int'
else
  local a = f
  if kind == 'int' then a = hi * W + lo end
  local b
  if ARGV[6] == 'int' then b = tonumber(ARGV[7]) * W + tonumber(ARGV[8])
  else b = tonumber(ARGV[7]) end
  local r = a + b
  if r ~= r then
    return redis.error_reply('LTTX bad_request incr of ' .. ARGV[2] .. ' would give nan')
  end
  if r == math.huge or r == -math.huge then
    local sign = ''
    if r < 0 then sign = '-' end
    return redis.error_reply('LTTX bad_request incr of ' .. ARGV[2] .. ' would give ' ..
      sign .. 'inf')
  end
  out, tag = '\\203' .. struct.pack('>d', r), 'float'
end
redis.call('SET', KEYS[2], out)
keep_expiry(d)
redis.call('HSET', KEYS[1], ARGV[1], tag)
local by
if ARGV[6] == 'int' then by = '\\211' .. struct.pack('>i4>I4', tonumber(ARGV[7]),
                                                       tonumber(ARGV[8]))
else by = '\\203' .. struct.pack('>d', tonumber(ARGV[7])) end
changed(ARGV[1], """ + _op("incr") + """ .. '\\145' .. by, bump(t))
return out
""")

# ARGV[6]: the deadline in ms; ARGV[7]: '1' to expire at once.
EXPIRE = _script("""
local t = live()
if not t then return 0 end
if ARGV[7] == '1' then
  remove(ARGV[1], KEYS[2], t, """ + _op("expire") + """)
  return 1
end
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
keep_expiry(ARGV[6])
return 1
""")

TTL = _script("""
local t, d = live()
if not t or not d then return nil end
return tonumber(d) - now
""")

# Removes at most ARGV[6] expired variables; ARGV[1] is the value-key prefix
# (each name's key is known only here).
SWEEP = _script("""
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
for _, name in ipairs(due) do
  local t = redis.call('HGET', KEYS[1], name)
  if t then
    remove(name, ARGV[1] .. name, t, """ + _op("expire") + """)
  else
    redis.call('ZREM', KEYS[4], name)
  end
end
return #due
""")

# The change feed's start (KEYS[1] the stream, KEYS[2] its epoch): makes the
# stream if need be; {epoch, seq of the oldest entry, seq of the newest}.
FEED_START = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], t[1] .. string.format('%06d', tonumber(t[2])))
  redis.call('XADD', KEYS[1], '0-1', 'n', '', 'c', '')
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local epoch = redis.call('GET', KEYS[2]) or '0'
local function seq(entries)
  if #entries == 0 then return '0' end
  return string.sub(entries[1][1], 3)
end
return {epoch, seq(first), seq(last)}
""")

SCRIPTS = (PUT, GET, EXISTS, DELETE, DICT_CHANGE, GET_DICT_VALUE, LIST_APPEND, LIST_POP,
           LIST_REMOVE, GET_LIST_VALUE, INCR, EXPIRE, TTL, SWEEP, FEED_START)

__all__ = ["FEED_START", "SCRIPTS"]
