"""
What the daemon knows, in plain Python: the variable store
(:mod:`~lttx.state.store`), the channel registry (:mod:`~lttx.state.channels`),
who may do what (:mod:`~lttx.state.auth`) and the status report
(:mod:`~lttx.state.status`).

No reactor here: values in, values or typed errors out, time passed in.
Imports only :mod:`lttx.wire` and :mod:`lttx.errors`.
"""
