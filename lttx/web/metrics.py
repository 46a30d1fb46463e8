"""
The status report in the Prometheus text exposition format (``/metrics``).

:class:`StatusCollector` is a ``prometheus_client`` custom collector over one
status report (the ``status`` request's, read when scraped): each number or
flag of it becomes a sample named after its place, ``lttx_<part>_<key>``;
the figures of each channel become ``lttx_channel_<key>{channel="..."}``.
Keys the report gains later (per-channel log figures, engine figures) appear
without changes here.  Figures that only grow are typed as counters
(:data:`COUNTERS`, exposed with the ``_total`` suffix); every other one is a
gauge.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.exposition import generate_latest, CONTENT_TYPE_LATEST

#: The (part, key) of the report's figures that only grow; part "" is the top.
COUNTERS = frozenset({
    ("channel", "messages"),
    ("channels", "published"), ("channels", "delivered"), ("channels", "evicted_for_memory"),
    ("channels", "gaps"), ("channels", "conflated_drops"),
    ("channels_redis", "batches_sent"), ("channels_redis", "appended"),
    ("channels_redis", "read"), ("channels_redis", "history_read"),
    ("channels_redis", "dropped_redis_down"), ("channels_redis", "epoch_changes"),
    ("channels_redis", "reads"), ("channels_redis", "entries_read"),
    ("channels_redis", "unblocks"),
    ("journal", "journal_fsyncs"), ("engine", "connects"),
})

#: What each figure means, where it is worth saying.
HELP = {
    "uptime": "Seconds since the daemon started.",
    "connections": "Open client connections.",
    "variables": "Cloud variables held.",
    "channel_subscribers": "Subscribers of the channel.",
    "channel_messages": "Messages published on the channel.",
    "channel_rate": "Messages per second on the channel, over the last second.",
    "channels_published": "Messages published on every channel.",
    "channels_delivered": "Messages delivered to subscribers.",
    "journal_writable": "1 while the journal accepts writes.",
    "journal_journal_bytes": "Bytes of the journal file.",
}

CONTENT_TYPE = CONTENT_TYPE_LATEST

_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


class StatusCollector(Collector):
    """The metric families of one status report."""

    def __init__(self, report: Mapping[str, Any]) -> None:
        self.report = report

    def collect(self) -> Iterator[Any]:
        report = dict(self.report)
        version = report.pop("version", None)
        if version is not None:
            info = InfoMetricFamily("lttx_build", "The daemon's version.")
            info.add_metric([], {"version": str(version)})
            yield info
        channels = report.get("channels")
        if isinstance(channels, dict) and isinstance(channels.get("channels"), dict):
            report["channels"] = dict(channels)
            yield from _per_channel(report["channels"].pop("channels"))
        if isinstance(report.get("engine"), dict):
            report["engine"] = dict(report["engine"])
            yield from _engine_view(report["engine"])
        yield from _figures("", report)


def _per_channel(channels: Mapping[str, Any]) -> Iterator[Any]:
    families: dict[str, Any] = {}
    for name, figures in channels.items():
        if not isinstance(figures, dict):
            continue
        for key, value in figures.items():
            number = _number(value)
            if number is None:
                continue
            family = families.get(key)
            if family is None:
                family = families[key] = _family(f"channel_{key}", ("channel", key), ["channel"])
            family.add_metric([str(name)], number)
    yield from families.values()


def _engine_view(engine: dict[str, Any]) -> Iterator[Any]:
    """
    The Redis engine's daemons and replicas as labelled samples (taken out of
    ``engine``): one metric per figure, the daemon id or replica address a
    label, not part of the name (ids change at every start).
    """
    daemons = engine.pop("daemons", None)
    if isinstance(daemons, dict):
        count = GaugeMetricFamily("lttx_engine_daemons",
                                  "Daemons heard from on this Redis in the last 5 s.")
        count.add_metric([], float(len(daemons)))
        yield count
        seen = GaugeMetricFamily("lttx_engine_daemon_seen_ago_seconds",
                                 "Seconds since each daemon on this Redis last said it is "
                                 "alive.", labels=["daemon", "host"])
        for daemon_id, figures in sorted(daemons.items()):
            ago = _number(figures.get("seen_ago")) if isinstance(figures, dict) else None
            if ago is not None:
                seen.add_metric([str(daemon_id), str(figures.get("host"))], ago)
        yield seen
    replication = engine.get("replication")
    if isinstance(replication, dict) and isinstance(replication.get("replicas"), list):
        engine["replication"] = replication = dict(replication)
        families = {
            "lag_bytes": GaugeMetricFamily(
                "lttx_engine_replica_lag_bytes", "Bytes of the replication stream each "
                "Redis replica lacks (the master's offset minus its own).", labels=["replica"]),
            "lag_s": GaugeMetricFamily(
                "lttx_engine_replica_lag_seconds", "Seconds since each Redis replica last "
                "acknowledged (Redis's lag).", labels=["replica"]),
            "online": GaugeMetricFamily(
                "lttx_engine_replica_online", "1 while the replica's state is online.",
                labels=["replica"]),
        }
        for replica in replication.pop("replicas"):
            if not isinstance(replica, dict):
                continue
            address = str(replica.get("address"))
            replica = dict(replica, online=replica.get("state") == "online")
            for key, family in families.items():
                value = _number(replica.get(key))
                if value is not None:
                    family.add_metric([address], value)
        yield from families.values()


def _figures(part: str, values: Mapping[str, Any]) -> Iterator[Any]:
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _figures(f"{part}_{key}" if part else str(key), value)
            continue
        number = _number(value)
        if number is None:
            continue
        name = f"{part}_{key}" if part else str(key)
        family = _family(name, (part, key), [])
        family.add_metric([], number)
        yield family


def _family(name: str, place: tuple[str, str], labels: list[str]) -> Any:
    name = "lttx_" + _NOT_NAME.sub("_", name)
    documentation = HELP.get(name[5:], f"The status report's {place[0] or 'daemon'} "
                                       f"figure {place[1]}.")
    if place in COUNTERS:
        return CounterMetricFamily(name, documentation, labels=labels)
    return GaugeMetricFamily(name, documentation, labels=labels)


def _number(value: Any) -> "float | None":
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    return None


def exposition(report: Mapping[str, Any]) -> bytes:
    """The text format of ``report``'s metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(report))
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "COUNTERS", "StatusCollector", "exposition"]
