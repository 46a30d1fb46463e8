"""
The client side: :func:`connect` makes a blocking :class:`Client`;
:class:`AsyncClient` is the Twisted-native one it runs on.

- :mod:`~lttx.client.settings`: where to connect and how (TLS included);
- :mod:`~lttx.client.protocol`: one connection's requests and replies;
- :mod:`~lttx.client.asyncclient`: the Twisted-native client;
- :mod:`~lttx.client.blocking`: the blocking client over it, on a reactor
  thread of its own (:mod:`~lttx.client.eventloop`);
- :mod:`~lttx.client.messages`: what a subscriber receives;
- :mod:`~lttx.client.files`: file transfers, each on a connection of its own.

Imports :mod:`lttx.wire` and :mod:`lttx.diskio`; never :mod:`lttx.server`.
"""

from .asyncclient import AsyncClient
from .blocking import DEFAULT_PUSH_BUFFER, Client, connect
from .messages import DEFAULT_QUEUE_LIMIT, Message, MessageQueue
from .protocol import ClientProtocol
from .settings import DEFAULT_PORT, DEFAULT_TIMEOUT, ConnectionSettings

__all__ = ["DEFAULT_PORT", "DEFAULT_PUSH_BUFFER", "DEFAULT_QUEUE_LIMIT", "DEFAULT_TIMEOUT",
           "AsyncClient", "Client", "ClientProtocol", "ConnectionSettings", "Message",
           "MessageQueue", "connect"]
