"""
The variable commands, written once: :class:`VariableCommands`, a mixin over
``call()`` (as redis-py's ``CoreCommands`` over ``execute_command``).

:class:`~lttx.client.asyncclient.AsyncClient` mixes it in and each command
returns a Deferred; :class:`~lttx.client.blocking.Client` mixes it in and each
returns the value; ``lttx.compat.txl`` maps the original client's names onto
it.  What each command sends and returns is in ``docs/protocol.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

#: What a command method returns: the value itself (the blocking client), or a
#: Deferred of it (the Twisted-native client).
Result = Any


class VariableCommands:
    """
    The 16 commands on cloud variables, over :meth:`call`.

    A class that mixes this in provides :meth:`call` (send one command, get
    its result or a Deferred of it) and :meth:`_then` (apply a function to
    what :meth:`call` returned: ``addCallback`` for a Deferred, a plain call
    for a value).
    """

    def call(self, command: str, *args: Any) -> Result:
        """Send any command (see docs/protocol.md) and get its result."""
        raise NotImplementedError

    def _then(self, result: Result, transform: Callable[[Any], Any]) -> Result:
        """``transform`` applied to a result of :meth:`call`, when it is there."""
        raise NotImplementedError

    def _present(self, result: Result, default: Any) -> Result:
        """``[value]`` -> value, ``[]`` -> ``default``, applied to a result of
        :meth:`call` when it is there (a class may do it without a closure)."""
        return self._then(result, _present_or(default))

    def ping(self) -> Result:
        """``"pong"``: the daemon is there and answers."""
        return self.call("ping")

    def put(self, name: str, value: Any, *, if_revision: Optional[int] = None,
            ttl: Optional[float] = None) -> Result:
        """Set the variable ``name`` to ``value`` (None, bool, int, float, str, bytes,
        list, dict, nested); done once the daemon has applied it.

        :param if_revision: apply only if the variable is at this revision
            (0: only if it does not exist).
        :param ttl: the variable expires this many seconds from now; without
            it, any expiry the variable had is cleared.
        :raises Conflict: the variable is not at ``if_revision``; nothing changed."""
        if if_revision is None and ttl is None:
            return self.call("put", name, value)
        return self.call("put", name, value, _options(if_revision=if_revision, ttl=ttl))

    def get(self, name: str, default: Any = None, *, revision: bool = False) -> Result:
        """The value of ``name``, or ``default`` if there is no such variable;
        with ``revision=True``, ``(value, revision)``, or ``(default, 0)``."""
        if revision:
            return self._then(self.call("get", name, {"revision": True}),
                              lambda found: (found[0], found[1]) if found else (default, 0))
        return self._present(self.call("get", name), default)

    def delete(self, name: str, *, if_revision: Optional[int] = None) -> Result:
        """Delete ``name``; whether it existed.

        :raises Conflict: the variable is not at ``if_revision``."""
        return self.call("delete", name, *_cas(if_revision))

    def incr(self, name: str, by: Any = 1) -> Result:
        """Add ``by`` (an int or float) to the number ``name``, atomically (created
        at 0); the new value.

        :raises WrongTypeError: if ``name`` holds something other than an int or float."""
        return self.call("incr", name, by)

    def expire(self, name: str, seconds: float) -> Result:
        """Make ``name`` expire ``seconds`` from now (0 or less: at once);
        whether it exists."""
        return self.call("expire", name, seconds)

    def ttl(self, name: str) -> Result:
        """The seconds until ``name`` expires; None if it has no expiry, or
        does not exist (``exists`` tells which)."""
        return self.call("ttl", name)

    def exists(self, name: str) -> Result:
        """Whether there is a variable ``name``."""
        return self.call("exists", name)

    def keys(self, pattern: str = "*") -> Result:
        """Sorted variable names matching a glob pattern (``*``, ``?``, ``[abc]``)."""
        return self.call("keys", pattern)

    def dict_change(self, name: str, key: Any, value: Any, *,
                    if_revision: Optional[int] = None) -> Result:
        """``d[key] = value`` on the server; the dict is created if absent.
        Every in-place command takes ``if_revision`` as :meth:`put` does.

        :raises WrongTypeError: if ``name`` holds something other than a dict."""
        return self.call("dict_change", name, key, value, *_cas(if_revision))

    def get_dict_value(self, name: str, key: Any, default: Any = None) -> Result:
        """One key of a (big) dict without fetching the dict, or ``default`` if
        the variable or the key is absent."""
        return self._present(self.call("get_dict_value", name, key), default)

    def list_append(self, name: str, item: Any, *, if_revision: Optional[int] = None) -> Result:
        """Append to a list variable (created if absent); the new length."""
        return self.call("list_append", name, item, *_cas(if_revision))

    def list_pop(self, name: str, index: int = -1, *,
                 if_revision: Optional[int] = None) -> Result:
        """Pop and return an item, as ``list.pop``.

        :raises IndexOutOfRange: on an empty list or an index outside it.
        :raises NotFound: if there is no such variable."""
        return self.call("list_pop", name, index, *_cas(if_revision))

    def list_remove(self, name: str, item: Any, *, if_revision: Optional[int] = None) -> Result:
        """Remove the first item equal to ``item`` (same type and value); whether one was."""
        return self.call("list_remove", name, item, *_cas(if_revision))

    def get_list_value(self, name: str, index: int) -> Result:
        """One item of a (big) list without fetching the list."""
        return self.call("get_list_value", name, index)

    def status(self) -> Result:
        """The daemon's figures: version, uptime, connections, variables, and
        one dict per component (channels, journal, files); see ``lttx status``."""
        return self.call("status")


def _options(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _cas(if_revision: Optional[int]) -> tuple[Any, ...]:
    """The options argument of an in-place command: none, or ``{"if_revision": R}``."""
    return () if if_revision is None else ({"if_revision": if_revision},)


def _present_or(default: Any) -> Callable[[list[Any]], Any]:
    """``[value]`` -> value, ``[]`` -> default (see ``get`` in docs/protocol.md)."""
    return lambda present: present[0] if present else default


__all__ = ["Result", "VariableCommands"]
