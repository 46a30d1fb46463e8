"""What both sides agree on, importing nothing: the package version, the wire
protocol version and the daemon's default port."""

__version__ = "0.1.0"

#: The protocol version a client announces in ``hello`` and the daemon answers with.
PROTOCOL_VERSION = 2

#: The daemon's port unless told otherwise (``twistd lttx --port``); the
#: client's and the ``lttx`` command's default.
DEFAULT_PORT = 2025
