"""
Engines other than the daemon's own memory: where several daemons keep what
they share.  Each imports :mod:`lttx.state` and :mod:`lttx.wire` only, and
offers the state layer's interfaces (``IVariableStore``, a ``ChannelRegistry``).
"""
