"""
Variables on disk: the journal and snapshot formats (:mod:`~lttx.storage.journal`)
and the :class:`~lttx.storage.durable.DurableStore` that keeps a memory store
durable with them.  Imports :mod:`lttx.state`, :mod:`lttx.wire` and
:mod:`lttx.diskio` only.
"""
