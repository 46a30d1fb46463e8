"""
The original LTtx client's names, over the new client.

A script written for the original ``tx.py`` runs with its import line
changed::

    from lttx.compat import txl          # was: from tx import *

    tx1 = txl("127.0.0.1", 2025, "LTtx")
    tx1.start_tx()
    tx1.put("test_list", [1, "2", 4, {"a": "cc", "b": 80}])
    print(tx1.get("test_list"))
    tx1.start_txg("test")                # "a@b" subscribes to a and b
    tx1.push("消息头", "this is a test", "test")
    print(tx1.Q.get())                   # "消息头|this is a test"

``from lttx.compat import *`` brings what ``from tx import *`` brought: ``txl``
and the modules the original imported (``socket``, ``threading``, ``json``,
``queue``, ``struct``, ``time``, ``os``, ``hashlib``, ``random``,
``datetime``, ``signal``), so scripts that used them unimported still run.

What stays as the original did: the names and argument orders (``tocken=``
too); ``Q`` yields ``"key|data"`` strings (``"%s|%s" % (key, data)``, as the
original formatted them); the original's value conventions (a ``put`` of a str
that parses as JSON stores it decoded, so ``put('cfg', json.dumps(d))`` then
``get('cfg')['a']`` works; values come back as JSON gave them: dict keys str,
tuples lists); ``get``/``get_dict_value``/``get_list_value`` give None for
what does not exist; ``put_df``/``get_df`` store a DataFrame as its JSON
records (readable by old clients on a ``--legacy-listen`` port); ``recv_file``
returns ``(code, msg)``; ``close_tx``/``close_txg`` return ``{"code": ...,
"msg": ...}``; ``start_tx`` waits, retrying once a second, while the daemon is
not up; the date, trading-day and file helpers (:mod:`lttx.compat.dates`).

What is better, and may differ:

- one connection carries everything (the original opened one per channel and
  one more per mode); it reconnects and resubscribes by itself.
- ``push`` and ``push_plus`` are the same thing: the new ``push`` is already
  pipelined and written in batches, which is what ``push_plus`` was for;
  ``start_plus``/``close_tx_plus`` exist and do what ``start_tx``/nothing do.
  ``data`` may be any value, not only a string; subscribers using the new
  client receive it unchanged.
- the ZMQ calls are mapped onto channels (no ZMQ proxy is needed, and nothing
  is lost as with ZMQ): ``start_MQ`` connects, ``MQ_push(var, data, who)`` is
  ``push(var, data, who)``, ``start_MQ_broadcast("a@b")`` is ``add_txg``;
  the ports are ignored.
- ``add_txg``/``cancel_txg`` really add and cancel subscriptions (the
  original's did nothing).
- ``put``, ``dict_change`` and ``list_*`` return once the daemon has applied
  the change (the original returned at once, and lost errors on the server).
  An error is raised as an :class:`lttx.LTtxError` (``dict_change`` on a
  list, ``list_pop`` on an empty list) instead of being dropped silently;
  ``list_pop`` returns the popped item and ``list_remove`` whether one was.
- a wrong token raises :class:`lttx.AuthError` instead of retrying forever.
- calls made before ``start_tx()`` connect first (the original returned an
  error dict).
- ``judge_is_TradeDay``/``get_last_TradeDay`` use ``chinese-calendar``
  (``pip install 'lttx[calendar]'``) or the original's
  ``pandas_market_calendars``, and say which to install when neither is there.
- not kept: ``check_version``/``update_tx_version`` (they downloaded a new
  ``tx.py`` from the author's server; here they do nothing), ``proxy`` and
  ``get_public_ip``.
- the new client's other variable commands are there too (``ping``,
  ``delete``, ``exists``, ``keys``, ``status``, ``call``).
"""

from __future__ import annotations

# What ``from tx import *`` brought into a script's namespace, besides txl.
import datetime
import hashlib
import json
import os
import queue
import random
import signal
import socket
import struct
import threading
import time
from typing import Any, Callable, Optional

from twisted.logger import Logger

from ..client import DEFAULT_TIMEOUT, Client, Message, connect
from ..client.commands import VariableCommands
from ..errors import ConnectError, IndexOutOfRange, NotFound
from ..wire.legacy import (
    dataframe_reply,
    dataframe_to_stored,
    decode_put_value,
    dict_key,
    old_value,
)
from .dates import CalendarMissing, OldHelpers  # noqa: F401  (CalendarMissing: to catch)

#: The original API this module provides (``txl.version``).
ORIGINAL_VERSION = "7.1.3"

__all__ = ["txl", "datetime", "hashlib", "json", "os", "queue", "random", "signal",
           "socket", "struct", "threading", "time"]


def key_data(message: Message) -> str:
    """A message as the original client's ``Q`` held it: ``"key|data"``."""
    return "%s|%s" % (message.key, message.data)


def dataframe_records(df: Any) -> Any:
    """What ``put_df`` stores for a DataFrame: its JSON records (one place, to
    switch to real DataFrame values)."""
    return dataframe_to_stored(df.to_json(orient="records", date_format="iso"))


def records_dataframe(stored: Any) -> Any:
    """The DataFrame ``get_df`` gives for a stored value (an empty one for none)."""
    import pandas as pd

    return pd.DataFrame(json.loads(dataframe_reply(stored)))


class txl(OldHelpers, VariableCommands):  # noqa: N801  (the original's name)
    """
    The original LTtx client, ``txl(ip, port, tocken)``.

    Its variable commands are the new client's (:mod:`lttx.client.commands`)
    under the original's argument names; it also has the new ones the
    original lacked (``ping``, ``delete``, ``exists``, ``keys``, ``status``).

    :param ip: the daemon's address.
    :param port: the daemon's port.
    :param tocken: the daemon's token (the original's spelling; ``token=`` works too).
    :param show: accepted, as the original's last versions took it, and
        ignored: the client prints nothing (it logs through ``twisted.logger``).
    :param check_version: accepted and ignored: the client never updates itself.
    :param timeout: seconds each call waits for the daemon (new).
    :param retry_for: how long ``start_tx`` retries while the daemon is down,
        in seconds; None (the original's behaviour) retries forever (new).
    """

    log = Logger()

    def __init__(self, ip: str, port: int, tocken: Optional[str] = None, show: bool = True,
                 check_version: bool = False, *, token: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 retry_for: Optional[float] = None) -> None:
        self.ip = ip
        self.port = port
        self.tocken = tocken if tocken is not None else token  # the original's name
        self.version = self.__version__ = ORIGINAL_VERSION
        #: Whether start_tx was called and close_tx not since (the original's).
        self.tx_running = False
        self.sys_print_on = show
        self.dict_TradeDay: dict[str, bool] = {}
        self.timeout = timeout
        self.retry_for = retry_for
        #: ``"key|data"`` strings of the subscribed channels' messages.
        self.Q: "queue.Queue[str]" = queue.Queue()
        self.channel_list = ""
        self.channel_pwd = ""
        self._client: Optional[Client] = None
        self._lock = threading.RLock()
        self._tx_on = False
        self._channels: list[str] = []

    # -- connections --------------------------------------------------------

    def _connection(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Client:
        deadline = None if self.retry_for is None else time.monotonic() + self.retry_for
        while True:
            try:
                return connect(self.ip, self.port, token=self.tocken, timeout=self.timeout)
            except ConnectError as e:
                # The original waited for its server the same way: once a second.
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                self.log.warn("LTtx at {ip}:{port} is not up ({error}); retrying in 1 s",
                              ip=self.ip, port=self.port, error=e.message)
                time.sleep(1)

    def _close_if_unused(self) -> None:
        with self._lock:
            if self._client is not None and not self._tx_on and not self._channels:
                client, self._client = self._client, None
                client.close()

    @property
    def txg(self) -> bool:
        """Whether channels are subscribed (the original held the socket here)."""
        return bool(self._channels)

    @property
    def txg_running(self) -> bool:
        """The same, the original's other name for it."""
        return bool(self._channels)

    @property
    def dict_txg(self) -> dict[str, dict[str, Any]]:
        """The subscribed channels, as the original's ``add_txg`` kept them."""
        return {name: {"con": 1} for name in self._channels}

    def start_tx(self, mode: Optional[str] = None) -> None:
        """Connect for ``put``/``get``/``push``; waits while the daemon is down."""
        self._connection()
        self._tx_on = True
        self.tx_running = True

    def check_version(self) -> None:
        """The original asked its author's server for a newer tx.py: nothing here."""

    def update_tx_version(self) -> None:
        """The original replaced tx.py from its author's server: not done here."""
        self.log.info("update_tx_version does nothing: upgrade with pip install -U lttx")

    def sys_print(self, data: Any) -> None:
        """Print ``data`` with the time, if ``show`` was True (the original's)."""
        if self.sys_print_on:
            print(self.get_nowtime(), "LTtx[info]>>>>:", data)

    def start_plus(self) -> None:
        """The original's connection for ``push_plus``: the same as :meth:`start_tx`."""
        self.start_tx()

    def start_txg(self, channel_list: "str | list[str]", pwd: str = "") -> None:
        """
        Receive the messages of ``channel_list`` (``"a@b"`` for several; a
        list works too) in :attr:`Q`; ``pwd`` is the channels' password (set
        by their first subscriber).  Calling it again adds channels.
        """
        names = channel_list if isinstance(channel_list, list) else channel_list.split("@")
        channels = [c for c in names if c]
        if not channels:
            raise ValueError("start_txg needs at least one channel name")
        client = self._connection()
        client.subscribe(channels, password=pwd or None, callback=self._received)
        with self._lock:
            self.channel_list = "@".join(self._channels + channels)
            self.channel_pwd = pwd
            self._channels.extend(c for c in channels if c not in self._channels)

    def _received(self, message: Message) -> None:
        # Called for each message of a channel subscribed by start_txg.
        self.Q.put(key_data(message))

    def close_tx(self) -> dict[str, Any]:
        """Stop ``put``/``get``/``push``; the connection stays while channels need it."""
        self.tx_running = False
        if not self._tx_on:
            return {"code": -1, "msg": "tx is not started"}
        self._tx_on = False
        self._close_if_unused()
        return {"code": 0, "msg": "tx closed"}

    def close_tx_plus(self) -> dict[str, Any]:
        """The original's ``push_plus`` connection: nothing of its own to close."""
        return {"code": 0, "msg": "tx_plus closed"}

    def close_txg(self) -> dict[str, Any]:
        """Unsubscribe from every channel of :meth:`start_txg`."""
        with self._lock:
            channels, self._channels = self._channels, []
            client = self._client
        if not channels or client is None:
            return {"code": -1, "msg": "txg is not started"}
        client.unsubscribe(channels)
        self._close_if_unused()
        return {"code": 0, "msg": "txg closed"}

    def add_txg(self, channel_name: "str | list[str]", pwd: str = "") -> None:
        """Subscribe to more channels (``"a@b"`` or a list) into :attr:`Q`."""
        self.start_txg(channel_name, pwd)

    def cancel_txg(self, channel_name: "str | list[str]") -> list[str]:
        """Unsubscribe from channels (``"a@b"`` or a list); the channels left."""
        names = channel_name if isinstance(channel_name, list) else channel_name.split("@")
        names = [c for c in names if c]
        with self._lock:
            client = self._client
            mine = [c for c in names if c in self._channels]
        if client is None or not mine:
            return []
        left: list[str] = client.unsubscribe(mine)
        with self._lock:
            self._channels = [c for c in self._channels if c not in mine]
            self.channel_list = "@".join(self._channels)
        self._close_if_unused()
        return left

    # -- the original's ZMQ mode, mapped onto channels --------------------------

    def start_MQ(self, pub_port: int = 5555) -> None:  # noqa: N802
        """Connect for :meth:`MQ_push` (``pub_port`` is ignored: no ZMQ proxy)."""
        self._connection()

    def start_MQ_broadcast(self, channel_list: str, sub_port: int = 5556) -> None:  # noqa: N802
        """Receive ``channel_list``'s messages in :attr:`Q`, as :meth:`add_txg`
        (``sub_port`` is ignored)."""
        self.add_txg(channel_list)

    def MQ_push(self, var: Any, data: Any, who: str) -> None:  # noqa: N802
        """Push ``data`` under ``var`` on the channel ``who``, as :meth:`push`."""
        self._connection().push(var, data, who)

    def close(self) -> None:
        """Close everything (new: the original had no single close)."""
        with self._lock:
            self._tx_on = False
            self._channels = []
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- cloud variables: lttx.client.commands, under the original's names --

    def call(self, command: str, *args: Any) -> Any:
        """Send any command of the new protocol (docs/protocol.md); its result."""
        return self._connection().call(command, *args)

    def _then(self, result: Any, transform: Callable[[Any], Any]) -> Any:
        return transform(result)

    # The original's argument names (``key``, ``var``, ``data``) are kept, so
    # calls that name them still work; what each sends is VariableCommands'.

    def put(self, key: str, data: Any) -> None:  # type: ignore[override]
        """Set the cloud variable ``key`` to ``data`` (a str holding JSON: decoded)."""
        super().put(key, decode_put_value(data))

    def get(self, key: str) -> Any:  # type: ignore[override]
        """The value of ``key`` as JSON gives it back, None if there is none."""
        return old_value(super().get(key))

    def put_df(self, key: str, df: Any) -> None:
        """Store a pandas DataFrame under ``key`` (as its JSON records)."""
        super().put(key, dataframe_records(df))

    def get_df(self, key: str) -> Any:
        """The DataFrame stored under ``key``; an empty one if there is none."""
        return records_dataframe(super().get(key))

    def list_append(self, var: str, data: Any) -> int:  # type: ignore[override]
        """Append ``data`` to the list ``var`` (created if absent)."""
        return super().list_append(var, data)  # type: ignore[no-any-return]

    def list_pop(self, var: str, data: Any = -1) -> Any:  # type: ignore[override]
        """Pop the item at index ``data`` of the list ``var``; the popped item."""
        return super().list_pop(var, int(data))

    def list_remove(self, var: str, data: Any) -> bool:  # type: ignore[override]
        """Remove the first item equal to ``data`` from the list ``var``."""
        return super().list_remove(var, data)  # type: ignore[no-any-return]

    def dict_change(self, var: str, key: Any, value: Any) -> None:  # type: ignore[override]
        """``var[key] = value`` on the dict ``var`` (created if absent); keys are
        JSON's: str."""
        super().dict_change(var, dict_key(key), value)

    def get_dict_value(self, var: str, key: Any) -> Any:  # type: ignore[override]
        """``var[key]`` of a dict variable; None if either does not exist."""
        missing = object()
        found = super().get_dict_value(var, dict_key(key), missing)
        if found is missing and not isinstance(key, str):
            found = super().get_dict_value(var, key, missing)  # a native client's key
        return None if found is missing else old_value(found)

    def get_list_value(self, key: str, index: int) -> Any:  # type: ignore[override]
        """``key[index]`` of a list variable; None if either does not exist."""
        try:
            return old_value(super().get_list_value(key, index))
        except (IndexOutOfRange, NotFound):
            return None

    # -- channels -----------------------------------------------------------

    def push(self, key: Any, data: Any, who: str = "") -> None:
        """Push ``data`` under ``key`` on the channel ``who``; does not wait."""
        self._connection().push(key, data, who)

    def push_plus(self, key: Any, data: Any, who: str = "") -> None:
        """The original's faster push; the same as :meth:`push` now."""
        self._connection().push(key, data, who)

    # -- files --------------------------------------------------------------

    def send_file(self, file_name: str, show_on: bool = True) -> dict[str, Any]:
        """
        Upload a local file under its base name; ``show_on`` shows a progress
        bar.  Returns its name, size and md5 (the original returned None).
        """
        return self._connection().send_file(file_name, progress=show_on)

    def recv_file(self, file_name: str, file_path: str = "./",
                  show_on: bool = False) -> tuple[int, str]:
        """
        Download ``file_name`` into the folder ``file_path`` (created if
        absent); ``(0, msg)`` when done, ``(-1, msg)`` if the daemon has no
        such file, as the original returned.
        """
        os.makedirs(file_path, exist_ok=True)
        started = time.monotonic()
        try:
            info = self._connection().recv_file(file_name, file_path, progress=show_on)
        except NotFound as e:
            return -1, f"no such file on the daemon: {e.message}"
        elapsed = time.monotonic() - started
        return 0, (f"{file_name} received, MD5 {info['md5']} checked, "
                   f"in {elapsed:.6f} s")
