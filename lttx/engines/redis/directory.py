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
from typing import Any, Callable, Optional

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
        #: The credential other daemons present to fetch this daemon's files
        #: (lttx.server.shared_files); published here, never in the status.
        self.files_token: Optional[str] = None
        #: The id of this daemon's files folder (the holder of its files in the
        #: Redis file directory; stable across restarts).
        self.files_id: Optional[str] = None

    def beat(self) -> None:
        now = self.clock()
        me = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "listening": self.addresses, "seen": now,
                         **({"files_token": self.files_token} if self.files_token else {}),
                         **({"files_id": self.files_id} if self.files_id else {})})
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
        now = self.clock()
        return {"id": self.daemon_id,
                "daemons": {k: {"host": v.get("host"), "pid": v.get("pid"),
                                "listening": v.get("listening"),
                                "files_id": v.get("files_id"),
                                "seen": v.get("seen"),
                                "seen_ago": (round(max(0.0, now - v["seen"]), 1)
                                             if isinstance(v.get("seen"), (int, float))
                                             else None)}
                            for k, v in sorted(self.known.items())}}

    def holding(self, files_id: str) -> Optional[tuple[str, dict[str, Any]]]:
        """
        The daemon whose files folder is ``files_id``, as this daemon last
        read it: its id and its entry (``host``, ``listening`` addresses,
        ``seen`` time, ``files_token``); None if no such daemon was heard
        from within :data:`DAEMON_TIMEOUT` seconds.
        """
        now = self.clock()
        for daemon_id, info in sorted(self.known.items(), key=lambda kv: -kv[1].get("seen", 0)):
            if info.get("files_id") == files_id and now - info.get("seen", 0) < DAEMON_TIMEOUT:
                return daemon_id, dict(info)
        return None


__all__ = ["DAEMON_TIMEOUT", "DaemonDirectory"]
