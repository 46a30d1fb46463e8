"""
The wire: what travels between a client and the daemon, with no I/O.

- :mod:`lttx.wire.codec`: the MessagePack payload of every frame and the frame kinds;
- :mod:`lttx.wire.frames`: the length prefix, the payload heads the fast paths
  recognise, and the raw frames of file data;
- :mod:`lttx.wire.framing`: a decoder that splits a byte stream into frames;
- :mod:`lttx.wire.batches`: MESSAGES frames, several messages of one channel in one frame;
- :mod:`lttx.wire.names`: what a variable, channel or file name may be;
- :mod:`lttx.wire.tls`: what a TLS failure says.

Both the daemon (:mod:`lttx.server`) and the client (:mod:`lttx.client`) build
on this package; it imports nothing of LTtx above :mod:`lttx.errors`.
"""
