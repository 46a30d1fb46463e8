"""
The Redis engine: several daemons on one Redis are one data center.

- :mod:`~lttx.engines.redis.resp`: our own RESP2 client (pipelining,
  scripts, reconnection, pub/sub, Sentinel);
- :mod:`~lttx.engines.redis.store`: the variables, one Lua script per operation;
- :mod:`~lttx.engines.redis.streams`, :mod:`~lttx.engines.redis.channels`,
  :mod:`~lttx.engines.redis.follower`, :mod:`~lttx.engines.redis.reading`:
  the channel logs as Redis Streams, shared by every daemon;
- :mod:`~lttx.engines.redis.directory`: who is alive;
- :mod:`~lttx.engines.redis.engine`: the assembly,
  :func:`~lttx.engines.redis.engine.make_redis_engine`.
"""
