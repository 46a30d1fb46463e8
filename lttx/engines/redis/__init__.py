"""
The Redis engine: several daemons on one Redis are one data center.

- :mod:`~lttx.engines.redis.resp`: our own RESP2 client (pipelining,
  scripts, reconnection, pub/sub, Sentinel);
- :mod:`~lttx.engines.redis.store`: the variables, one Lua script per operation;
- :mod:`~lttx.engines.redis.engine`: the channel bridge, the daemon
  directory, and :func:`~lttx.engines.redis.engine.make_redis_engine`.
"""
