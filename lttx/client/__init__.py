"""
The client side: :func:`connect` makes a blocking :class:`Client`;
:class:`AsyncClient` is the Twisted-native one it runs on.

- :mod:`~lttx.client.settings`: where to connect and how (TLS in
  :mod:`~lttx.client.tls`);
- :mod:`~lttx.client.protocol`: one connection's requests and replies,
  command or file;
- :mod:`~lttx.client.connection`: opening a connection (connect, ``hello``),
  and keeping one up with Twisted's ``ClientService``;
- :mod:`~lttx.client.commands`: the variable commands, written once;
- :mod:`~lttx.client.asyncclient`: the Twisted-native client;
- :mod:`~lttx.client.blocking`: the blocking client over it, on a reactor
  thread of its own (:mod:`~lttx.client.eventloop`);
- :mod:`~lttx.client.messages`: what a subscriber receives;
- :mod:`~lttx.client.watch` and :mod:`~lttx.client.mirror`: watched changes
  and local mirrors of variables;
- :mod:`~lttx.client.files`: file transfers, each on a connection of its own.

Imports :mod:`lttx.wire`, :mod:`lttx.diskio`, :mod:`lttx.errors` and
:mod:`lttx._version`; never :mod:`lttx.server`, :mod:`lttx.state`,
:mod:`lttx.storage` or :mod:`lttx.engines`.
"""

from .asyncclient import AsyncClient
from .blocking import DEFAULT_PUSH_BUFFER, Client, connect
from .messages import DEFAULT_QUEUE_LIMIT, Message, MessageQueue
from .protocol import ClientProtocol
from .mirror import Mirror
from .settings import DEFAULT_PORT, DEFAULT_TIMEOUT, ConnectionSettings
from .watch import Change, Watch

__all__ = ["DEFAULT_PORT", "DEFAULT_PUSH_BUFFER", "DEFAULT_QUEUE_LIMIT", "DEFAULT_TIMEOUT",
           "AsyncClient", "Change", "Client", "ClientProtocol", "ConnectionSettings", "Message",
           "MessageQueue", "Mirror", "Watch", "connect"]
