"""
The daemon's side of a connection: the protocol that authenticates a client
and dispatches its requests (:mod:`~lttx.server.protocol`), the factory that
holds what connections share (:mod:`~lttx.server.factory`), the outbox that
writes to a subscriber at the pace it reads (:mod:`~lttx.server.outbox`) and
the file session (:mod:`~lttx.server.files`).

Imports :mod:`lttx.state`, :mod:`lttx.wire` and :mod:`lttx.diskio`; never
:mod:`lttx.client`.
"""
