"""
How far Redis's replicas are behind: :class:`ReplicationView` reads
``INFO replication`` every second (on the directory's beat) and
:func:`parse_replication` turns it into what ``lttx status`` shows under
``engine.replication``: the master's ``master_repl_offset`` and, for each
replica, its offset, how many bytes of the replication stream it lacks
(``lag_bytes``) and the seconds since its last acknowledgement (``lag_s``,
Redis's own ``lag``).
"""

from __future__ import annotations

from typing import Any, Optional

from .resp import RedisClient


def _fields(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and not key.startswith("#"):
            found[key] = value
    return found


def parse_replication(text: str) -> dict[str, Any]:
    """
    The figures of an ``INFO replication`` reply.

    >>> parse_replication("role:master\\r\\nconnected_slaves:1\\r\\n"
    ...     "slave0:ip=10.0.0.2,port=6380,state=online,offset=90,lag=0\\r\\n"
    ...     "master_repl_offset:100\\r\\n")["replicas"][0]["lag_bytes"]
    10
    """
    fields = _fields(text)
    role = fields.get("role", "unknown")
    report: dict[str, Any] = {"role": role}
    offset = _int(fields.get("master_repl_offset"))
    report["offset"] = offset
    if role == "master":
        replicas = []
        for key in sorted((k for k in fields if k.startswith("slave") and k[5:].isdigit()),
                          key=lambda k: int(k[5:])):
            parts = dict(p.partition("=")[::2] for p in fields[key].split(","))
            replica_offset = _int(parts.get("offset"))
            replicas.append({
                "address": f"{parts.get('ip', '?')}:{parts.get('port', '?')}",
                "state": parts.get("state", "unknown"),
                "offset": replica_offset,
                "lag_bytes": (None if offset is None or replica_offset is None
                              else max(0, offset - replica_offset)),
                "lag_s": _int(parts.get("lag")),
            })
        report["replicas"] = replicas
    else:
        report["master"] = f"{fields.get('master_host', '?')}:{fields.get('master_port', '?')}"
        report["link"] = fields.get("master_link_status", "unknown")
    return report


def _int(value: Optional[str]) -> Optional[int]:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


class ReplicationView:
    """The last ``INFO replication`` of the engine's Redis, read on each beat."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.report: Optional[dict[str, Any]] = None

    def poll(self) -> None:
        def got(reply: Any) -> None:
            text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
            self.report = parse_replication(text)

        def failed(_: Any) -> None:
            self.report = None  # Redis is away: nothing known (the role says so)

        self.client.execute("INFO", "replication").addCallbacks(got, failed)

    def status(self) -> Optional[dict[str, Any]]:
        return self.report if self.client.connected else None


__all__ = ["ReplicationView", "parse_replication"]
