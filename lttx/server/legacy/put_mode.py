"""
``put_mode``: the original client's ``start_tx`` connection (variables and ``push``).

Requests are frames of ``{"func", "value", "who"}`` without ids.  Reads
(``get``, ``get_dict_value``, ``get_list_value``, ``get_dataframe``) are
answered strictly in the order they came, each with the JSON of the JSON of
``{"value": v}`` (``{"code": -1, "msg": ...}`` when refused: what the
original client then returns).  Writes (``put``, ``put_dataframe``,
``list_*``, ``dict_change``) and ``push`` get no reply, as before; a refused
one is logged.  The variables are the daemon's (native clients see what old
ones write, and the reverse) with the old value conventions applied here
(:mod:`lttx.wire.legacy`), and the token's rights checked as on the native port.

While the client does not read its replies, its requests are not read
either (:class:`~lttx.server.reader.ReadThrottle`), so replies never pile up.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ...errors import BadRequest, IndexOutOfRange, LTtxError, NotFound
from ...state.auth import authorize
from ...state.store import MISSING
from ..reader import ReadThrottle
from .framed import FramedMode
from .handshake import LegacyProtocol
from ...wire.legacy import (
    TX_HEARTBEAT,
    dataframe_reply,
    dataframe_to_stored,
    decode_put_value,
    dict_key,
    reply_frame,
    to_json,
)


def _then(result: Any, f: Callable[[Any], Any]) -> Any:
    """``f(result)``, once ``result`` is there if it is a Deferred."""
    if isinstance(result, Deferred):
        return result.addCallback(f)
    return f(result)


def _name(name: Any) -> Any:
    """A variable name as the original kept it: a number named it by its JSON text
    (which is what the original's data0.txt saved)."""
    return dict_key(name) if isinstance(name, (int, float)) else name


def _args(value: Any, count: int, func: str) -> list[Any]:
    """The items of a request's value, its first (the variable's name) as :func:`_name`."""
    if not isinstance(value, list) or len(value) != count:
        raise BadRequest(f"{func} takes a value of {count} items")
    return [_name(value[0]), *value[1:]]


class PutMode(FramedMode):
    """One ``put_mode`` connection."""

    name = "put_mode"

    def __init__(self, connection: LegacyProtocol, handshake: dict[str, Any]) -> None:
        super().__init__(connection)
        # Replies in request order: [done, frame] slots, written from the head.
        self.replies: deque[list[Any]] = deque()
        self.transport.registerProducer(ReadThrottle(self.set_reading), True)
        self.log.info("{peer} connected (legacy put_mode)", peer=connection.peer)
        connection.send_handshake_reply({"code": 0, "msg": "put_mode connected",
                                         "id_code": next(connection.legacy.ids)})

    def connection_lost(self, reason: Failure) -> None:
        self.replies.clear()

    def frame_received(self, frame: bytes) -> None:
        try:
            request = json.loads(frame.decode("utf-8", errors="replace"))
        except ValueError:
            self.refused("request", BadRequest("a put_mode frame holds JSON"))
            return
        func = request.get("func") if isinstance(request, dict) else None
        read = self.READS.get(func) if isinstance(func, str) else None
        if read is not None:
            self._read(func, read, request.get("value"))
            return
        write = self.WRITES.get(func) if isinstance(func, str) else None
        if write is None:
            self.refused("request", BadRequest(f"unknown func {str(func)[:40]!r}"))
            return
        try:
            result = write(self, request.get("value"), request.get("who"))
        except LTtxError as e:
            self.refused(func, e)
            return
        if isinstance(result, Deferred):
            result.addErrback(lambda failure: self.failed(func, failure))

    # -- reads: answered in order -------------------------------------------

    def _read(self, func: str, read: Callable[..., Any], value: Any) -> None:
        slot: list[Any] = [False, b""]
        self.replies.append(slot)
        try:
            result = read(self, value)
        except LTtxError as e:
            result = _refusal(e)
        if isinstance(result, Deferred):
            result.addErrback(lambda failure: self._read_failed(func, failure))
            result.addCallback(lambda reply: self._answer(slot, reply))
        else:
            self._answer(slot, result)

    def _read_failed(self, func: str, failure: Failure) -> dict[str, Any]:
        if failure.check(LTtxError):
            return _refusal(failure.value)
        self.log.failure("{peer}: legacy {func} failed", failure, peer=self.connection.peer,
                         func=func)
        return {"code": -1, "msg": "internal: the daemon failed to serve it"}

    def _answer(self, slot: list[Any], reply: dict[str, Any]) -> None:
        slot[0], slot[1] = True, reply_frame(reply)
        replies = self.replies
        out = []
        while replies and replies[0][0]:
            out.append(replies.popleft()[1])
        if out and not self.connection.lost:
            self.transport.write(b"".join(out))

    def _get(self, value: Any) -> Any:
        value = _name(value)
        authorize(self.connection.grant, "read", value)
        return _then(self.state.store.get(value), _value)

    def _get_dict_value(self, value: Any) -> Any:
        name, key = _args(value, 2, "get_dict_value")
        authorize(self.connection.grant, "read", name)
        store = self.state.store
        # Old clients' keys are stored as str; a native client's may not be.
        first = dict_key(key)

        def found(result: Any) -> Any:
            if result is MISSING and first != key:
                return _then(store.get_dict_value(name, key), _value)
            return _value(result)

        return _then(_none_if_missing(lambda: store.get_dict_value(name, first)), found)

    def _get_list_value(self, value: Any) -> Any:
        name, index = _args(value, 2, "get_list_value")
        authorize(self.connection.grant, "read", name)
        return _then(_none_if_missing(lambda: self.state.store.get_list_value(name, index)),
                     _value)

    def _get_dataframe(self, value: Any) -> Any:
        value = _name(value)
        authorize(self.connection.grant, "read", value)
        return _then(self.state.store.get(value),
                     lambda stored: {"value": dataframe_reply(stored)})

    READS: dict[str, Callable[..., Any]] = {
        "get": _get, "get_dict_value": _get_dict_value, "get_list_value": _get_list_value,
        "get_dataframe": _get_dataframe}

    # -- writes and push: no reply -------------------------------------------

    def _write(self, name: Any) -> None:
        authorize(self.connection.grant, "write", name)

    def _put(self, value: Any, who: Any) -> Any:
        name, data = _args(value, 2, "put")
        self._write(name)
        return self.state.store.put(name, decode_put_value(data))

    def _put_dataframe(self, value: Any, who: Any) -> Any:
        name, records = _args(value, 2, "put_dataframe")
        self._write(name)
        try:
            stored = dataframe_to_stored(records)
        except ValueError as e:
            raise BadRequest(f"put_dataframe of {str(name)[:60]!r}: {e}") from None
        return self.state.store.put(name, stored)

    def _list_append(self, value: Any, who: Any) -> Any:
        name, item = _args(value, 2, "list_append")
        self._write(name)
        return self.state.store.list_append(name, item)

    def _list_pop(self, value: Any, who: Any) -> Any:
        name, index = _args(value, 2, "list_pop")
        self._write(name)
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise BadRequest(f"list_pop index {str(index)[:20]!r} is not an int") from None
        return self.state.store.list_pop(name, index)

    def _list_remove(self, value: Any, who: Any) -> Any:
        name, item = _args(value, 2, "list_remove")
        self._write(name)
        return self.state.store.list_remove(name, item)

    def _dict_change(self, value: Any, who: Any) -> Any:
        name, key, item = _args(value, 3, "dict_change")
        self._write(name)
        return self.state.store.dict_change(name, dict_key(key), item)

    def _push(self, value: Any, who: Any) -> None:
        self.publish(who, value, TX_HEARTBEAT)

    WRITES: dict[str, Callable[..., Any]] = {
        "put": _put, "put_dataframe": _put_dataframe, "list_append": _list_append,
        "list_pop": _list_pop, "list_remove": _list_remove, "dict_change": _dict_change,
        "push": _push}


def _value(result: Any) -> dict[str, Any]:
    return {"value": None if result is MISSING else to_json(result)}


def _none_if_missing(read: Callable[[], Any]) -> Any:
    """A read whose no-such-variable or out-of-range answers None, as the original's."""
    try:
        result = read()
    except (NotFound, IndexOutOfRange):
        return MISSING
    if isinstance(result, Deferred):
        def missing(failure: Failure) -> Any:
            failure.trap(NotFound, IndexOutOfRange)
            return MISSING
        result.addErrback(missing)
    return result


def _refusal(error: LTtxError) -> dict[str, Any]:
    return {"code": -1, "msg": f"{error.code}: {error.message}"}
