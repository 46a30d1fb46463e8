"""
The file directory of the daemons on one Redis: which daemon holds each file.

Files stay on the disk of the daemon that received them; the hash
``<prefix>files`` says, for each name, which files folder holds it (its
*holder*: the id of a daemon's files folder, kept in the folder itself, so
it survives restarts, unlike the daemon's own id), with its size, MD5 and
mtime (a JSON object per name).  The holder writes the entry when an
upload completes (the last completed upload of a name wins) and removes it
when the file is deleted; every daemon lists, downloads and deletes through
it (:mod:`lttx.server.shared_files`).

A sweep on each daemon (:func:`plan_sweep`, at start and then every
:data:`SWEEP_PERIOD` seconds) keeps the entries true to its disk: it lists
files the directory does not know (an upload that completed while Redis was
unreachable, a Redis restarted empty), drops entries of its own whose file
is gone, and deletes its copies that a later upload elsewhere superseded.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, NamedTuple, Optional

from twisted.internet.defer import Deferred

from .resp import RedisClient, Script

#: Seconds between two sweeps of one daemon's files against the directory.
SWEEP_PERIOD = 10.0

#: Set the entry of a name (ARGV[1]) to ARGV[2] (whose mtime is ARGV[4]),
#: unless another daemon's entry says its copy completed later (the last
#: completed upload wins, whichever entry reaches Redis first); with ARGV[3]
#: == "nx" only if the name has no entry.  Returns {the entry it found or "",
#: 1 if it replaced it}.
REGISTER = Script("""
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  if ARGV[3] == 'nx' then return {old, 0} end
  local entry = cjson.decode(old)
  if entry['holder'] ~= ARGV[5] and tonumber(entry['mtime']) > tonumber(ARGV[4]) then
    return {old, 0}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {old or '', 1}
""")

#: Remove the entry of a name (ARGV[1]) if holder ARGV[2] still holds it;
#: 1 if removed.
REMOVE = Script("""
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
if cjson.decode(old)['holder'] ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
""")

SCRIPTS = (REGISTER, REMOVE)


class Entry(NamedTuple):
    """Where a file lives and what it is."""

    #: The holding files folder's id (hex; see :func:`lttx.server.shared_files.folder_id`).
    holder: str
    size: int
    #: Hex MD5, or None for a file found on disk by a sweep (not hashed).
    md5: Optional[str]
    mtime: float

    def encode(self) -> bytes:
        return json.dumps(self._asdict(), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Optional["Entry"]:
        """The entry, or None for one that is not ours to read (left alone)."""
        try:
            fields = json.loads(data)
            return cls(str(fields["holder"]), int(fields["size"]), fields.get("md5"),
                       float(fields["mtime"]))
        except (ValueError, KeyError, TypeError):
            return None


class FileDirectory:
    """
    The ``<prefix>files`` hash: one :class:`Entry` per file name.

    :param client: the engine's command connection (it loads :data:`SCRIPTS`).
    :param holder_id: the id of this daemon's files folder, the ``holder`` of
        the entries it writes.
    """

    def __init__(self, client: RedisClient, prefix: str, holder_id: str) -> None:
        self.client = client
        self.key = prefix + "files"
        self.holder_id = holder_id
        #: The entry count as last read (for the status report).
        self.count = 0

    def register(self, name: str, size: int, md5: Optional[str], mtime: float,
                 only_new: bool = False) -> "Deferred[tuple[Optional[Entry], bool]]":
        """
        Say that this daemon holds ``name`` (a copy completed at ``mtime``);
        fires with the entry found and whether this one replaced it (not if
        another daemon's copy completed later, nor, with ``only_new``, if
        the name has an entry at all).
        """
        entry = Entry(self.holder_id, size, md5, mtime)
        d = self.client.evalsha(REGISTER, [self.key],
                                [name, entry.encode(), "nx" if only_new else "", repr(mtime),
                                 self.holder_id])
        return d.addCallback(lambda reply: (Entry.decode(reply[0]) if reply[0] else None,
                                            bool(reply[1])))

    def lookup(self, name: str) -> "Deferred[Optional[Entry]]":
        """The entry of ``name``, None if no daemon holds it."""
        d = self.client.execute("HGET", self.key, name)
        return d.addCallback(lambda data: None if data is None else Entry.decode(data))

    def entries(self) -> "Deferred[dict[str, Entry]]":
        """Every entry, by name."""
        def read(reply: list[bytes]) -> dict[str, Entry]:
            found = {}
            for i in range(0, len(reply), 2):
                entry = Entry.decode(reply[i + 1])
                if entry is not None:
                    found[reply[i].decode("utf-8", "surrogateescape")] = entry
            self.count = len(found)
            return found
        return self.client.execute("HGETALL", self.key).addCallback(read)

    def remove(self, name: str) -> "Deferred[bool]":
        """Drop the entry of ``name`` if this daemon still holds it."""
        d = self.client.evalsha(REMOVE, [self.key], [name, self.holder_id])
        return d.addCallback(bool)

    def status(self) -> dict[str, Any]:
        return {"shared": True, "holder": self.holder_id, "listed": self.count}


class SweepPlan(NamedTuple):
    """What one sweep does: each a list of names."""

    #: Local files the directory does not know: listed (only if still unknown).
    register_new: list[str]
    #: Local files whose entry is wrong or older: listed as this daemon's.
    register: list[str]
    #: Entries of this daemon whose file is gone: removed.
    remove: list[str]
    #: Local copies a later upload through another daemon replaced: deleted.
    superseded: list[str]


def plan_sweep(me: str, local: Mapping[str, tuple[int, float]],
               entries: Mapping[str, Entry], busy: Iterable[str] = ()) -> SweepPlan:
    """
    Compare this daemon's files (``name -> (size, mtime)``) with the
    directory's entries (read *before* the folder was scanned, so that an
    upload completing in between is never mistaken for a vanished file).

    :param busy: names being uploaded here: left alone this time.
    """
    skip = set(busy)
    plan = SweepPlan([], [], [], [])
    for name, (size, mtime) in sorted(local.items()):
        if name in skip:
            continue
        entry = entries.get(name)
        if entry is None:
            plan.register_new.append(name)
        elif entry.holder == me:
            if entry.size != size or abs(entry.mtime - mtime) > 1e-3:
                plan.register.append(name)  # changed on disk by other means
        elif entry.mtime >= mtime:
            plan.superseded.append(name)  # the last completed upload is elsewhere
        else:
            plan.register.append(name)  # ours completed later (Redis was away then)
    for name, entry in sorted(entries.items()):
        if entry.holder == me and name not in local and name not in skip:
            plan.remove.append(name)
    return plan


__all__ = ["Entry", "FileDirectory", "SCRIPTS", "SWEEP_PERIOD", "SweepPlan", "plan_sweep"]
