"""The package version and the wire protocol version: imported by both sides,
importing nothing."""

__version__ = "0.1.0"

#: The protocol version a client announces in ``hello`` and the daemon answers with.
PROTOCOL_VERSION = 1
