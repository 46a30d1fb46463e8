"""
The JSON documents of the HTTP side, read from the daemon's state when asked.

- :class:`StatusReports`: the ``status`` request's report, as is
  (``/status.json``, ``/metrics``), possibly a Deferred (a remote engine
  answers later); one report serves every HTTP request of the same second,
  so that pages left open and scrapers cost the reactor at most one report
  a second however many they are (the files part scans the files folder);
- :func:`connections_report`: each open connection's peer, token name,
  kind, since when, bytes in and out, subscription count and file transfer
  in flight
  (``/connections.json``), from integers the protocols keep;
- :func:`health`: whether the daemon can serve (``/healthz``): the journal
  writable and the engine connected, asked of those two components only.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

from ..server.state import ServerState

#: The most connections ``/connections.json`` lists (the oldest first).
MAX_CONNECTIONS_LISTED = 1000


#: Seconds one status report serves the HTTP requests that follow it.
REPORT_MAX_AGE = 1.0


class StatusReports:
    """
    The ``status`` command's report for HTTP requests, made at most once per
    ``max_age`` seconds.

    :param state: the daemon's state, whose ``status()`` makes the report.
    :param clock: the time now, in seconds.
    """

    def __init__(self, state: ServerState, clock: Callable[[], float],
                 max_age: float = REPORT_MAX_AGE) -> None:
        self._state = state
        self._clock = clock
        self._max_age = max_age
        self._report: Optional[dict[str, Any]] = None
        self._made = 0.0

    def get(self) -> Any:
        """A report (a dict, not to be changed), or a Deferred firing with one."""
        now = self._clock()
        if self._report is not None and 0 <= now - self._made < self._max_age:
            return self._report
        report = self._state.status()
        if not isinstance(report, Deferred):  # a remote engine's answer is not kept
            self._report, self._made = report, now
        return report


def connections_report(state: ServerState,
                       limit: int = MAX_CONNECTIONS_LISTED) -> dict[str, Any]:
    """The open connections, oldest first, at most ``limit`` of them."""
    rows = []
    for connection in state.connections:
        grant = getattr(connection, "grant", None)
        reader = getattr(connection, "reader", None)
        rows.append({
            "peer": connection.peer,
            "token": grant.name if connection.authenticated and grant is not None else None,
            "kind": ("file" if getattr(connection, "file_session", None) is not None
                     else "requests" if getattr(connection, "requests_only", False)
                     else "command" if connection.authenticated else "hello"),
            "since": getattr(connection, "since", None),
            "bytes_in": getattr(connection, "bytes_in", 0),
            "bytes_out": getattr(connection, "bytes_out", 0),
            "subscriptions": (len(state.channels.channels_of(reader))
                              if reader is not None else 0),
            "transfer": _transfer(getattr(connection, "file_session", None)),
        })
    rows.sort(key=lambda row: (row["since"] is None, row["since"] or 0.0, row["peer"]))
    return {"total": len(rows), "connections": rows[:limit]}


def _transfer(session: Any) -> Optional[dict[str, Any]]:
    """A file connection's transfer in flight: its kind, file, bytes done and size."""
    if session is None:
        return None
    upload, download = session.upload, session.download
    if upload is not None:
        return {"kind": "upload", "name": upload.name, "done": upload.received,
                "size": upload.size}
    if download is not None:
        return {"kind": "download", "name": download.name, "done": download.done,
                "size": download.size}
    return None


def health(state: ServerState) -> Optional[str]:
    """
    None while the daemon can serve; otherwise why not (one short line,
    nothing else of the status report).
    """
    journal = state.status_sources.get("journal")
    if journal is not None:
        figures = journal.status()
        if isinstance(figures, dict) and figures.get("writable") is False:
            return "the journal is not writable"
    engine = state.status_sources.get("engine")
    if engine is not None:
        figures = engine.status()
        if isinstance(figures, dict) and figures.get("role") == "disconnected":
            return "the engine is unavailable (Redis disconnected)"
    return None


__all__ = ["MAX_CONNECTIONS_LISTED", "REPORT_MAX_AGE", "StatusReports", "connections_report",
           "health"]
