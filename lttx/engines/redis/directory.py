"""
The daemon directory: each daemon on one Redis says, every second, in the hash
``<prefix>daemons``, that it is alive and where it listens; each reads who
else is (what ``lttx status`` shows under ``engine``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Callable

from twisted.application.service import Service
from twisted.logger import Logger

from .resp import RedisClient
from .store import RedisStore

#: A daemon not heard from for this long is no longer listed.
DAEMON_TIMEOUT = 5.0


class DaemonDirectory(Service):
    """Says in Redis, every second, that this daemon is alive; reads who else is."""

    log = Logger()

    def __init__(self, client: RedisClient, store: RedisStore, daemon_id: bytes,
                 clock: Callable[[], float] = time.time) -> None:
        self.client, self.store = client, store
        self.key = store.prefix + "daemons"
        self.daemon_id = daemon_id.hex()
        self.clock = clock
        self.addresses: list[str] = []
        self.known: dict[str, Any] = {}
        self._listing = ""

    def beat(self) -> None:
        now = self.clock()
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "listening": self.addresses, "seen": now})
        self.store.refresh()
        self.client.execute("HSET", self.key, self.daemon_id, me).addErrback(lambda f: None)
        self.client.execute("HGETALL", self.key).addCallbacks(self._read, lambda f: None)

    def _read(self, reply: list[bytes]) -> None:
        now = self.clock()
        known = {}
        for i in range(0, len(reply), 2):
            info = json.loads(reply[i + 1])
            if now - info.get("seen", 0) < DAEMON_TIMEOUT:
                known[reply[i].decode()] = info
        listing = ", ".join(" ".join(info.get("listening") or ["?"])
                            for _, info in sorted(known.items()))
        if listing != self._listing:
            self._listing = listing
            self.log.info("daemons on this Redis: {daemons}", daemons=listing)
        self.known = known

    def stopService(self) -> Any:
        super().stopService()
        if self.client.connected:
            return self.client.execute("HDEL", self.key, self.daemon_id).addErrback(
                lambda f: None)
        return None

    def status(self) -> dict[str, Any]:
        return {"id": self.daemon_id,
                "daemons": {k: {"host": v.get("host"), "pid": v.get("pid"),
                                "listening": v.get("listening")}
                            for k, v in sorted(self.known.items())}}


__all__ = ["DAEMON_TIMEOUT", "DaemonDirectory"]
