"""
A run of PUBLISH payloads into the channel logs in one loop:
:func:`publish_frames`, the daemon's hot path for a feed.

Plain Python.  What :meth:`ChannelRegistry.publish
<lttx.state.channels.ChannelRegistry.publish>` does for one message, done for
every payload of a connection's run (``[5, channel, key, data]``, head
``94 05``, ``lttx.wire.framing.FrameDecoder.take_run``) with the registry's
lookups made once: the payload is decoded here, its tail reused as the
message's encoding.  Only the common case is written out here (a known
channel, a key of an allowed type, a seq from 65,536 to 2**32 - 1); any other
message goes through ``publish`` itself, and so does every message of a
registry whose ``publish`` is its own (the Redis engine's).  The state this
leaves is the state ``publish`` leaves, message for message
(tests/state/test_publishing.py holds the two side by side).
"""

from __future__ import annotations

from typing import Callable, Sequence

import msgpack

from ..errors import LTtxError
from ..wire.codec import encoded_ext
from ..wire.frames import MESSAGE_HEAD, PREFIX
from .channellog import ENTRY_OVERHEAD
from .channels import _KEY_TYPES, ChannelRegistry


def publish_frames(registry: ChannelRegistry, payloads: Sequence[bytes],
                   undecodable: Callable[[bytes], None],
                   refused: Callable[[LTtxError], None]) -> None:
    """
    Publish each PUBLISH payload of ``payloads``, in order.

    :param undecodable: called with a payload that is not one valid value
        (or holds a refused extension type): the caller reports it.
    :param refused: called with the error of a message the registry refused
        (a bad channel name or key type); the others go on.
    """
    unpackb, hook = msgpack.unpackb, encoded_ext
    publish = registry.publish
    channels = registry._channels
    inline = type(registry).publish is ChannelRegistry.publish
    join, pack = b"".join, PREFIX.pack
    for payload in payloads:
        try:
            message = unpackb(payload, raw=False, strict_map_key=False, ext_hook=hook,
                              use_list=True)
        except Exception:  # not one valid value, or a refused extension
            undecodable(payload)
            continue
        channel, key = message[1], message[2]
        log = channels.get(channel) if inline and type(channel) is str else None
        if (log is None or type(key) not in _KEY_TYPES
                or not 0xFFFF < log.next_seq < 0x100000000):
            try:
                publish(channel, key, message[3], payload[2:])
            except LTtxError as e:
                refused(e)
            continue
        # ChannelRegistry.publish's common case, line for line.
        seq = log.next_seq
        encoded = payload[2:]
        frame = join((pack(len(encoded) + 7), MESSAGE_HEAD, encoded,
                      b"\xce", seq.to_bytes(4, "big")))  # 0xce: a uint32
        registry.published = arrival = registry.published + 1
        log.next_seq = seq + 1
        log._frames.append(frame)
        log._order.append(arrival)
        size = len(frame) + ENTRY_OVERHEAD
        log.bytes += size
        values = log.last_values
        values[key] = (seq, frame)
        if len(values) > log.last_values_cap:
            log._evict_last_values()
        if log.bytes > log.history_bytes:
            size -= log.drop_bytes(log.bytes - log.history_bytes + (log.history_bytes >> 4))
        registry.retained += size
        if not log.dirty:
            log.dirty = True
            registry._dirty.append(log)
        if registry.retained > registry.history_memory:
            registry._evict()


__all__ = ["publish_frames"]
