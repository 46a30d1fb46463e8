"""
Sending what a reactor turn wrote before the reactor's next turn.

Twisted's ``transport.write`` only buffers: the bytes go out when the
reactor next polls and finds the socket writable, one more turn of the loop
(an ``epoll_wait``, the dispatch, a ``doWrite``) between a request's reply
being ready and its first byte leaving.  On a request/reply path that turn
is a large part of the round trip, and on the push -> subscriber path it is
added to every tick's latency.

:func:`send_now` does that ``doWrite`` at once, at the end of the work that
wrote (a chunk of requests served, a subscriber's wake, a request sent), and
only when it changes nothing but the timing: a plain TCP transport (TLS has
its own buffering), connected, whose earlier bytes all went out (nothing of
an earlier write waits for the socket to drain), not closing, its producer
(if any) a streaming one that is not paused.  The bytes of the turn still
leave in one ``send``; what the kernel does not take stays in the transport's
buffer, in order, as usual, and the transport's producer (flow control) sees
the same buffer it would have seen.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

_PLAIN = (tcp.Server, tcp.Client)


def is_plain_tcp(transport: Any) -> bool:
    """Whether ``transport`` is Twisted's own TCP transport, without TLS."""
    return type(transport) in _PLAIN and not transport.TLS


def _idle(transport: Any) -> bool:
    return (type(transport) in _PLAIN and not transport._tempDataLen
            and not transport.dataBuffer and transport.connected and not transport.TLS
            and not transport.disconnecting and not transport._writeDisconnecting
            and (transport.producer is None
                 or (transport.streamingProducer and not transport.producerPaused)))


def write_now(transport: Any, data: bytes) -> None:
    """
    ``transport.write(data)``, its bytes sent at once when the transport is
    idle (plain TCP, nothing of its own buffered, as :func:`send_now` asks):
    one ``send``, without registering the socket for writing and taking it
    off again (two ``epoll_ctl`` calls and a reactor turn's bookkeeping).
    What the kernel does not take is written to the transport, in order.
    """
    if data and _idle(transport):
        try:
            sent = transport.socket.send(data)
        except InterruptedError:
            sent = 0
        except OSError:
            # EAGAIN, or a broken connection: the transport's own write
            # meets it (or the reactor's doWrite does) and closes as usual.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def send_now(transport: Any) -> None:
    """Write ``transport``'s newly buffered bytes now, if that is safe (see above)."""
    if (type(transport) in _PLAIN and transport._tempDataLen
            and not transport.dataBuffer and transport.connected and not transport.TLS
            and not transport.disconnecting and not transport._writeDisconnecting
            and (transport.producer is None
                 or (transport.streamingProducer and not transport.producerPaused))):
        # Not while closing (doWrite would finish the close, which is the
        # reactor's to do), nor with a paused or pull producer (doWrite would
        # resume it from inside the code that is writing).  A failed send
        # returns the error; the transport is still registered for writing,
        # so the reactor's own doWrite meets it and closes the connection as
        # it would have.
        transport.doWrite()


__all__ = ["is_plain_tcp", "send_now", "write_now"]
