"""
The requests of a command connection: variables, channels, ``ping`` and
``status``, one small ``cmd_<name>`` handler each.

A handler gets the request's arguments (their count checked by the
:class:`~lttx.server.dispatch.Dispatcher`, and the token's right from
:data:`lttx.state.auth.COMMAND_RIGHTS`) and returns the reply's value, or a
Deferred of it, or raises an :class:`~lttx.errors.LTtxError`.  The message
set is in ``docs/protocol.md``.  To add a command: a ``cmd_<name>`` here
marked with :func:`~lttx.server.dispatch.command`, and its right in
``COMMAND_RIGHTS``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..errors import BadRequest, LimitExceeded
from ..state.auth import Grant, authorize, password_exemption
from ..state.store import MISSING
from ..wire.limits import (
    MAX_CHANNELS_PER_CONNECTION,
    MAX_NESTING,
    check_channel_count,
    check_nesting,
    name_list,
)
from ..wire.names import split_channels
from .dispatch import PLAIN_RESULTS, command
from .reader import ChannelReader
from .state import ServerState


#: The keys a subscribe's options map may have (docs/protocol.md, "Channels").
_SUBSCRIBE_OPTIONS = frozenset({"conflate", "history", "since", "epoch", "last_values",
                                "resume"})


class CommandConnection(Protocol):
    """What the handlers need of their connection."""

    #: The peer's address, for log lines.
    peer: str
    #: What the connection's token may do.
    grant: Grant
    #: The connection's subscriber side, once it subscribed.
    reader: Optional[ChannelReader]

    def open_reader(self) -> ChannelReader:
        """The connection's channel reader, made by the first subscribe."""


class Commands:
    """
    The handlers of one command connection.

    :param state: what the daemon's connections share.
    :param connection: the connection the requests come from.
    """

    log = Logger()

    def __init__(self, state: ServerState, connection: CommandConnection) -> None:
        self.state = state
        self.connection = connection

    # -- channels (the registry lives in the state) -------------------------

    @command(1, 3)
    def cmd_subscribe(self, channels: Any, password: Any = None, options: Any = None) -> Any:
        names = split_channels(check_channel_count(channels))
        self._check_held(names)
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise BadRequest("subscribe options must be a map")
        unknown = set(options) - _SUBSCRIBE_OPTIONS
        if unknown:
            raise BadRequest(f"unknown subscribe options: {', '.join(sorted(map(str, unknown)))}")
        for flag in ("conflate", "last_values"):
            if options.get(flag) is not None and type(options[flag]) is not bool:
                raise BadRequest(f"subscribe option {flag} must be true or false, "
                                 f"not {type(options[flag]).__name__}")
        conflate = bool(options.get("conflate", False))
        if options.get("history") is not None and options.get("since") is not None:
            raise BadRequest("subscribe takes history or since, not both")
        grant = self.connection.grant
        for name in names:
            authorize(grant, "subscribe", name)
        reader = self.connection.open_reader()
        result = self.state.channels.subscribe(
            reader, names, password, conflate, history=options.get("history"),
            since=options.get("since"), epoch=options.get("epoch"),
            last_values=bool(options.get("last_values", False)), resume=options.get("resume"),
            exempt=self._password_exempt())
        extra = [k for k in ("conflate", "history", "since", "last_values", "resume")
                 if options.get(k)]
        self.log.info("{peer} subscribed to {channels}{options}", peer=self.connection.peer,
                      channels=name_list(names),
                      options=f" ({', '.join(extra)})" if extra else "")
        return result

    def _password_exempt(self) -> Optional[Callable[[str], bool]]:
        """With a roles file, a token with ``all`` or a right naming the channel
        is not held to a password another token set (README, "Tokens with roles")."""
        return password_exemption(self.state.auth, self.connection.grant)

    def _check_held(self, names: list[str]) -> None:
        """Refuse a subscribe that would take the connection past its channel bound."""
        reader = self.connection.reader
        held = reader.positions if reader is not None else {}
        total = len(held) + sum(1 for name in names if name not in held)
        if total > MAX_CHANNELS_PER_CONNECTION:
            raise LimitExceeded(f"a connection may be subscribed to at most "
                                f"{MAX_CHANNELS_PER_CONNECTION} channels; this subscribe "
                                f"would make {total} (docs/limits.md)")

    @command(1)
    def cmd_unsubscribe(self, channels: Any) -> Any:
        names = split_channels(check_channel_count(channels))
        reader = self.connection.reader
        if reader is None:
            return []
        left = self.state.channels.unsubscribe(reader, names)
        if left:
            self.log.info("{peer} unsubscribed from {channels}", peer=self.connection.peer,
                          channels=name_list(left))
        return left

    @command(3)
    def cmd_publish(self, channel: Any, key: Any, data: Any) -> Any:
        """An acknowledged publish: the reply is the message's seq, once it is in the log."""
        return self.state.channels.publish_acknowledged(channel, key, data)

    # -- watch (the change log lives in the registry) -----------------------

    @command(1, 2)
    def cmd_watch(self, patterns: Any, options: Any = None) -> Any:
        wanted = _patterns(patterns)
        resume = _options(options, "watch", ("resume",)).get("resume")
        source = self.state.channels.changes_source
        loading = source.ready() if source is not None else None
        if loading is not None:  # the Redis engine's first watch: the shared log loads
            return loading.addCallback(lambda _: self.cmd_watch(patterns, options))
        reader = self.connection.open_reader()
        current = reader.watch.patterns if reader.watch is not None else []
        grant = self.connection.grant
        allowed = ((lambda name: True) if grant.unlimited
                   else (lambda name: grant.allows("read", name)))
        result = self.state.channels.watch(reader, [*current, *wanted], allowed, resume)
        self.log.info("{peer} watches {patterns}{resumed}", peer=self.connection.peer,
                      patterns=", ".join(wanted), resumed=" (resumed)" if resume else "")
        return result

    @command(1)
    def cmd_unwatch(self, patterns: Any) -> Any:
        gone = set(_patterns(patterns))
        reader = self.connection.reader
        if reader is None or reader.watch is None:
            return []
        left = [p for p in reader.watch.patterns if p not in gone]
        if left:
            reader.watch.set_patterns(left)
        else:
            self.state.channels.unwatch(reader)
        return left

    # -- variables ----------------------------------------------------------

    @command(0)
    def cmd_ping(self) -> str:
        return "pong"

    @command(2, 3)
    def cmd_put(self, name: Any, value: Any, options: Any = None) -> Any:
        check_nesting(value)
        if options is None:
            return self.state.store.put(name, value)
        return self.state.store.put(name, value, **_options(options, "put", _PUT_OPTIONS))

    @command(1, 2)
    def cmd_get(self, name: Any, options: Any = None) -> Any:
        if options is None or not _options(options, "get", ("revision",)).get("revision"):
            return _map(self.state.store.get(name), _present)
        return _map(self.state.store.get(name, revision=True), _present_with_revision)

    @command(1, 2)
    def cmd_delete(self, name: Any, options: Any = None) -> Any:
        return self.state.store.delete(name, **_options(options, "delete", _CAS))

    @command(1)
    def cmd_exists(self, name: Any) -> Any:
        return self.state.store.exists(name)

    @command(0, 1)
    def cmd_keys(self, pattern: Any = "*") -> Any:
        names = self.state.store.keys(pattern)
        grant = self.connection.grant
        if grant.unlimited:
            return names
        # A token sees only the names it may read.
        return _map(names, lambda found: [n for n in found if grant.allows("read", n)])

    @command(3, 4)
    def cmd_dict_change(self, name: Any, key: Any, value: Any, options: Any = None) -> Any:
        # The value goes one level down, inside the variable's dict.
        check_nesting(value, MAX_NESTING - 1)
        return self.state.store.dict_change(name, key, value,
                                            **_options(options, "dict_change", _CAS))

    @command(2)
    def cmd_get_dict_value(self, name: Any, key: Any) -> Any:
        return _map(self.state.store.get_dict_value(name, key), _present)

    @command(2, 3)
    def cmd_list_append(self, name: Any, item: Any, options: Any = None) -> Any:
        check_nesting(item, MAX_NESTING - 1)
        return self.state.store.list_append(name, item, **_options(options, "list_append", _CAS))

    @command(1, 3)
    def cmd_list_pop(self, name: Any, index: Any = -1, options: Any = None) -> Any:
        return self.state.store.list_pop(name, index, **_options(options, "list_pop", _CAS))

    @command(2, 3)
    def cmd_list_remove(self, name: Any, item: Any, options: Any = None) -> Any:
        return self.state.store.list_remove(name, item, **_options(options, "list_remove", _CAS))

    @command(1, 2)
    def cmd_incr(self, name: Any, by: Any = 1) -> Any:
        return self.state.store.incr(name, by)

    @command(2)
    def cmd_expire(self, name: Any, seconds: Any) -> Any:
        return self.state.store.expire(name, seconds)

    @command(1)
    def cmd_ttl(self, name: Any) -> Any:
        return self.state.store.ttl(name)

    @command(2)
    def cmd_get_list_value(self, name: Any, index: Any) -> Any:
        return self.state.store.get_list_value(name, index)

    # -- the daemon ---------------------------------------------------------

    @command(0)
    def cmd_status(self) -> Any:
        return self.state.status()


_CAS = ("if_revision",)
#: The longest watch pattern accepted.
MAX_PATTERN = 1024


def _patterns(patterns: Any) -> list[str]:
    """A watch's patterns: a glob or a non-empty list of globs."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if (not isinstance(patterns, list) or not patterns
            or not all(type(p) is str and 0 < len(p) <= MAX_PATTERN for p in patterns)):
        raise BadRequest(f"watch patterns must be a glob or a non-empty list of globs "
                         f"(1 to {MAX_PATTERN} characters each)")
    return patterns


_PUT_OPTIONS = ("if_revision", "ttl")


def _options(options: Any, command: str, known: tuple[str, ...]) -> dict[str, Any]:
    """The options map of a request (the optional last argument), checked."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest(f"{command} options must be a map")
    unknown = [k for k in options if k not in known]
    if unknown:
        raise BadRequest(f"{command} has no option {unknown[0]!r:.40} "
                         f"(it takes {', '.join(known)})")
    return {k: v for k, v in options.items() if v is not None}


def _present_with_revision(found: tuple[Any, int]) -> list[Any]:
    """``[value, revision]`` for a value, ``[]`` for none."""
    value, revision = found
    return [] if value is MISSING else [value, revision]


def _present(value: Any) -> list[Any]:
    """``[value]`` for a value, ``[]`` for none: tells a stored None from no variable."""
    return [] if value is MISSING else [value]


def _map(result: Any, f: Callable[[Any], Any]) -> Any:
    """Apply ``f`` to a result that may still be a Deferred."""
    if type(result) in PLAIN_RESULTS or not isinstance(result, Deferred):
        return f(result)
    return result.addCallback(f)
