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

What stays as the original did: the names and argument orders; ``Q`` yields
``"key|data"`` strings (``"%s|%s" % (key, data)``, as the original formatted
them); ``get``/``get_dict_value``/``get_list_value`` give None for what does
not exist; ``recv_file`` returns ``(code, msg)``; ``close_tx``/``close_txg``
return ``{"code": ..., "msg": ...}``; ``start_tx`` waits, retrying once a
second, while the daemon is not up.

What is better, and may differ:

- one connection carries everything (the original opened one per channel and
  one more per mode); it reconnects and resubscribes by itself.
- ``push`` and ``push_plus`` are the same thing: the new ``push`` is already
  pipelined and written in batches, which is what ``push_plus`` was for;
  ``start_plus``/``close_tx_plus`` exist and do what ``start_tx``/nothing do.
  ``data`` may be any value, not only a string; subscribers using the new
  client receive it unchanged.
- ``put``, ``dict_change`` and ``list_*`` return once the daemon has applied
  the change (the original returned at once, and lost errors on the server).
  An error is raised as an :class:`lttx.LTtxError` (``dict_change`` on a
  list, ``list_pop`` on an empty list) instead of being dropped silently;
  ``list_pop`` returns the popped item and ``list_remove`` whether one was.
- a wrong token raises :class:`lttx.AuthError` instead of retrying forever.
- calls made before ``start_tx()`` connect first (the original returned an
  error dict).
- the new client's other variable commands are there too (``ping``,
  ``delete``, ``exists``, ``keys``, ``status``, ``call``).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable, Optional

from twisted.logger import Logger

from .client import DEFAULT_TIMEOUT, Client, Message, connect
from .client.commands import VariableCommands
from .errors import ConnectError, IndexOutOfRange, NotFound

__all__ = ["txl"]


def key_data(message: Message) -> str:
    """A message as the original client's ``Q`` held it: ``"key|data"``."""
    return "%s|%s" % (message.key, message.data)


class txl(VariableCommands):  # noqa: N801  (the original's name, kept so old scripts run)
    """
    The original LTtx client, ``txl(ip, port, token)``.

    Its variable commands are the new client's (:mod:`lttx.client.commands`)
    under the original's argument names; it also has the new ones the
    original lacked (``ping``, ``delete``, ``exists``, ``keys``, ``status``).

    :param ip: the daemon's address.
    :param port: the daemon's port.
    :param token: the daemon's token (the original's ``tocken``).
    :param show: accepted, as the original's last versions took it, and
        ignored: the client prints nothing (it logs through ``twisted.logger``).
    :param check_version: accepted and ignored: the client never updates itself.
    :param timeout: seconds each call waits for the daemon (new).
    :param retry_for: how long ``start_tx`` retries while the daemon is down,
        in seconds; None (the original's behaviour) retries forever (new).
    """

    log = Logger()

    def __init__(self, ip: str, port: int, token: Optional[str], show: bool = True,
                 check_version: bool = False, *, timeout: float = DEFAULT_TIMEOUT,
                 retry_for: Optional[float] = None) -> None:
        self.ip = ip
        self.port = port
        self.tocken = token  # the original's attribute name
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

    def start_tx(self) -> None:
        """Connect for ``put``/``get``/``push``; waits while the daemon is down."""
        self._connection()
        self._tx_on = True

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
        """Set the cloud variable ``key`` to ``data``."""
        super().put(key, data)

    def get(self, key: str) -> Any:  # type: ignore[override]
        """The value of ``key``, None if there is none."""
        return super().get(key)

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
        """``var[key] = value`` on the dict ``var`` (created if absent)."""
        super().dict_change(var, key, value)

    def get_dict_value(self, var: str, key: Any) -> Any:  # type: ignore[override]
        """``var[key]`` of a dict variable; None if either does not exist."""
        return super().get_dict_value(var, key)

    def get_list_value(self, key: str, index: int) -> Any:  # type: ignore[override]
        """``key[index]`` of a list variable; None if either does not exist."""
        try:
            return super().get_list_value(key, index)
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
