"""
The channel log in Redis: how a channel's messages, epoch and last values are
kept, and the two Lua scripts that write and open them.

Keys (``<prefix>`` from ``--redis-prefix``, ``lttx:`` by default):

- ``<prefix>s:<channel>``, a Stream: the channel's retained messages.  Each
  entry has one field, ``m``, the MessagePack encoding of ``channel, key,
  data`` one after the other (the tail of the PUBLISH frame, never
  re-encoded).  Entry ids are ``0-<seq>``: the milliseconds part is always 0,
  the sequence part is the message's ``seq`` (``XADD ... 0-*`` gives the next
  one), so ``seq`` is the same on every daemon and consecutive.  A Stream
  keeps its last id when ``MAXLEN`` trims it empty, so seqs never go back
  while the key lives.
- ``<prefix>m:<channel>``, a hash: ``epoch``, the log's epoch (a decimal
  63-bit int, drawn by the daemon that made the stream).  The stream is made
  (empty, by ``XGROUP CREATE ... MKSTREAM``) by the first subscribe or the
  first publish, whichever comes first, with a new epoch.  When the stream
  key is gone (deleted, expired, or Redis restarted empty) the next script
  that touches the channel makes it again with a new epoch: its seqs start at
  1 again, and a subscriber resuming from the old epoch is told of a gap.
  A stream that lost its newest entries (a Sentinel failover to a replica
  that had not got them) gets a new epoch from the first daemon that finds
  out (:data:`OPEN`, when its follower reconnects): its seqs go on from the
  stream's last id, and every daemon's subscribers are told of a gap.
- ``<prefix>v:<channel>`` (a hash: MessagePack key -> the entry's ``m``) and
  ``<prefix>w:<channel>`` (a sorted set: MessagePack key scored by its seq):
  the newest message of each key (``last_values``), at most the registry's
  ``last_values_limit`` keys; past it by a 16th, the least recently updated
  go.

``MAXLEN`` is approximate (``~``, trimmed a radix-tree node at a time) and
computed from ``--channel-history`` (bytes) at the size of the messages being
written: ``history_bytes // (average entry size + ENTRY_OVERHEAD)``.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from ...state.channellog import ENTRY_OVERHEAD
from ...wire.frames import MESSAGE_HEAD, PREFIX, pack_seq
from .resp import Script

_ID = re.compile(rb"0-(\d+)\Z")

#: The field of a stream entry holding the encoded message.
FIELD = b"m"


def stream_id(seq: int) -> bytes:
    """The stream entry id of message ``seq`` (``seq`` >= 0; 0 is "before the first")."""
    if type(seq) is not int or seq < 0:
        raise ValueError(f"a seq is a non-negative int, not {seq!r}")
    return b"0-%d" % seq


def seq_of(entry_id: bytes) -> int:
    """The seq of a stream entry id written by :data:`APPEND` (``0-<seq>``).

    :raises ValueError: for an id not of that form (another program's XADD).
    """
    match = _ID.match(entry_id)
    if match is None or (len(match.group(1)) > 1 and match.group(1)[:1] == b"0"):
        raise ValueError(f"not an LTtx stream id: {entry_id[:40]!r}")
    return int(match.group(1))


class Keys:
    """The Redis keys of one channel."""

    __slots__ = ("stream", "meta", "values", "recency")

    def __init__(self, prefix: bytes, channel: str) -> None:
        name = channel.encode("utf-8")
        self.stream = prefix + b"s:" + name
        self.meta = prefix + b"m:" + name
        self.values = prefix + b"v:" + name
        self.recency = prefix + b"w:" + name

    def all(self) -> list[bytes]:
        return [self.stream, self.meta, self.values, self.recency]


def frame_of(seq: int, encoded: bytes) -> bytes:
    """The MESSAGE frame (length prefix included) of an entry."""
    payload = MESSAGE_HEAD + encoded + pack_seq(seq)
    return PREFIX.pack(len(payload)) + payload


def entry_frames(entries: Any) -> list[tuple[int, bytes]]:
    """``(seq, MESSAGE frame)`` of each entry of an XRANGE/XREAD reply.

    :raises ValueError: for an entry LTtx did not write.
    """
    out = []
    for entry_id, fields in entries:
        if not isinstance(fields, list) or len(fields) != 2 or fields[0] != FIELD:
            raise ValueError(f"not an LTtx stream entry: {entry_id!r}")
        seq = seq_of(entry_id)
        out.append((seq, frame_of(seq, fields[1])))
    return out


def max_length(history_bytes: int, sizes: int, count: int) -> int:
    """The ``MAXLEN ~`` that keeps about ``history_bytes`` of messages of
    ``sizes / count`` bytes each (at least 1)."""
    return max(1, history_bytes // (sizes // max(1, count) + ENTRY_OVERHEAD))


def key_bytes(key: Any) -> bytes:
    """A message key as the last-values hash's field."""
    return msgpack.packb(key)


# The stream is (re)made, with the caller's candidate epoch, when its key is gone.
_ENSURE = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'lttx', '$', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[1], 'lttx')
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
  redis.call('DEL', KEYS[3], KEYS[4])
elseif not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
"""

#: Append a batch.  KEYS: stream, meta, values, recency.  ARGV: candidate
#: epoch, MAXLEN, last-values limit, then (key bytes, encoded message) pairs.
#: Returns ``{epoch, id of the batch's first message}``.
APPEND = Script(_ENSURE + """
local maxlen, limit = ARGV[2], tonumber(ARGV[3])
local first
for i = 4, #ARGV, 2 do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '0-*', 'm', ARGV[i + 1])
  if not first then first = id end
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[4], tonumber(string.sub(id, 3)), ARGV[i])
end
local keys = redis.call('ZCARD', KEYS[4])
if keys > limit + math.floor(limit / 16) then
  local old = redis.call('ZRANGE', KEYS[4], 0, keys - limit - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, keys - limit - 1)
  for j = 1, #old, 1000 do
    redis.call('HDEL', KEYS[3], unpack(old, j, math.min(j + 999, #old)))
  end
end
return {epoch, first}
""")

#: Open a channel (make its stream if need be).  KEYS as :data:`APPEND`;
#: ARGV: candidate epoch, then the epoch and last seq the caller has read
#: (``''`` if none): a stream of that epoch whose last seq is lower lost
#: entries the caller read (a failover to a replica behind) and gets the
#: candidate epoch.  Returns ``{epoch, last id, first id or false, length}``.
OPEN = Script(_ENSURE + """
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, first, length = '0-0', false, 0
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1]
  elseif info[i] == 'first-entry' and info[i + 1] then first = info[i + 1][1]
  elseif info[i] == 'length' then length = info[i + 1] end
end
if ARGV[2] ~= '' and epoch == ARGV[2]
    and tonumber(string.sub(last, 3)) < tonumber(ARGV[3]) then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
return {epoch, last, first, length}
""")

SCRIPTS = [APPEND, OPEN]


class Opened:
    """What :data:`OPEN` says of a channel's stream."""

    __slots__ = ("epoch", "last", "first", "length")

    def __init__(self, reply: Any) -> None:
        epoch, last, first, length = reply
        self.epoch = int(epoch)
        #: The seq of the newest message the stream ever had (0: none).
        self.last = seq_of(last)
        #: The seq of the oldest retained (``last + 1`` if none is).
        self.first = seq_of(first) if first else self.last + 1
        self.length = int(length)

    def __repr__(self) -> str:
        return f"Opened(epoch={self.epoch}, last={self.last}, first={self.first})"


def appended(reply: Any) -> tuple[int, int]:
    """``(epoch, seq of the batch's first message)`` from an :data:`APPEND` reply."""
    epoch, first = reply
    return int(epoch), seq_of(first)


__all__ = ["APPEND", "FIELD", "Keys", "OPEN", "Opened", "SCRIPTS", "appended",
           "entry_frames", "frame_of", "key_bytes", "max_length", "seq_of", "stream_id"]
