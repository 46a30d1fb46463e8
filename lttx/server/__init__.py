"""
The daemon's side of a connection.

- :mod:`~lttx.server.state`: :class:`ServerState`, what connections share
  (store, channel registry, authenticator, file service, limits, clock, the
  open connections, the status report);
- :mod:`~lttx.server.factory`: the factory, one protocol per connection;
- :mod:`~lttx.server.protocol`: the connection's plumbing (hello, frames,
  fatal errors, the reading throttle, publish frames, the channel reader);
- :mod:`~lttx.server.dispatch`: the one dispatcher of requests (arity,
  rights, error frames, the log line) for command and file connections;
- :mod:`~lttx.server.commands`: the variable and channel commands;
- :mod:`~lttx.server.reader`: writes to a subscriber from the channel logs at the pace it reads;
- :mod:`~lttx.server.files`: the files folder and its rules;
- :mod:`~lttx.server.file_session`: one file connection's transfer.

A request goes: protocol (decode) -> dispatcher (arity, rights) -> handler
(``Commands`` or ``FileSession``) -> store, registry or file service -> reply.

Imports :mod:`lttx.state`, :mod:`lttx.wire`, :mod:`lttx.storage` and
:mod:`lttx.diskio`; never :mod:`lttx.client` or :mod:`lttx.tap`.
"""
