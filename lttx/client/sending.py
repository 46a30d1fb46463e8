"""
Every write of one client connection, from the reactor thread or from a
blocking caller's own thread, in one order: :class:`Sender`.

A blocking call used to hand its request to the reactor thread (a waker
write, the reactor's wake, its turn) before the first byte left.  Where that
cannot change what the daemon receives, :meth:`Sender.send_from_thread` lets
the calling thread put the bytes into the kernel itself, as redis-py does:

- only on a plain TCP command connection (TLS keeps its own buffering, so
  every write of a TLS connection stays in the reactor thread);
- only under :attr:`Sender.lock`, which every write of the reactor thread
  takes too (:meth:`Sender.write`, and the client's push flushes around
  taking their frames), so frames never interleave and nothing written
  earlier can be overtaken;
- only while the transport holds no bytes of its own and no earlier bytes of
  a calling thread wait (:meth:`Sender.idle`): what Twisted buffers goes
  first, and ``doWrite`` (which takes no lock) only ever empties those
  buffers, which are read in the order it fills and empties them;
- on a duplicate of the socket's descriptor, closed by this module under the
  lock: a thread never writes to a descriptor number that Twisted closed and
  the process reused.

What the kernel does not take at once goes to the reactor thread
(:meth:`_drain`) and, until it is written there, every later write waits
behind it: the transport's buffer and its producer (flow control) see it
as they see any write.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any, Callable, Optional

from ..wire.writes import is_plain_tcp, send_now, write_now


#: poll() events saying the daemon's side of the connection is gone.
_PEER_GONE = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR
#: Linux's TCP_INFO, whose first byte is the connection's state.
_TCP_INFO: Optional[int] = getattr(socket, "TCP_INFO", None)
_ESTABLISHED = 1  # TCP_ESTABLISHED in linux/tcp_states.h


def peer_open(sock: socket.socket) -> bool:
    """
    Whether the daemon's side of ``sock`` is still open (no FIN, no RST seen).

    The reactor thread may not have seen the daemon go yet, and a request
    sent now would be lost with the connection instead of waiting for the
    reconnection, as a request made during an outage does.  Linux: the TCP
    state, read without releasing the GIL (a poll() would release it, and
    getting it back costs ~10% of a round trip); elsewhere a poll.
    """
    if _TCP_INFO is not None:
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0] == _ESTABLISHED
    hangup = select.poll()
    hangup.register(sock.fileno(), _PEER_GONE)
    return not hangup.poll(0)


class Sender:
    """
    The writes of one connection, in order, from any thread.

    :param transport: the connection's transport.
    :param call_from_thread: the reactor's ``callFromThread`` (to hand the
        reactor what a calling thread's send left over); None makes every
        write the reactor thread's.
    :param direct: whether calling threads may send (a command connection).
    """

    def __init__(self, transport: Any, call_from_thread: Optional[Callable[..., None]],
                 direct: bool) -> None:
        self.transport = transport
        #: Held by every write; a client shares one across its connections.
        self.lock: "threading.RLock" = threading.RLock()  # type: ignore[assignment]
        self._call_from_thread = call_from_thread
        self._sock: Optional[socket.socket] = None
        if direct and call_from_thread is not None and is_plain_tcp(transport):
            sock = socket.socket(fileno=socket.dup(transport.fileno()))
            sock.setblocking(False)
            self._sock = sock
        # What a calling thread's send left over, for the reactor thread.
        self._backlog: list[bytes] = []

    @property
    def direct(self) -> bool:
        """Whether a calling thread may send on this connection (plain TCP, open)."""
        return self._sock is not None

    # -- the reactor thread ---------------------------------------------------

    def write(self, data: bytes) -> None:
        """In the reactor thread: write ``data`` after everything written before."""
        with self.lock:
            if self._backlog:
                self._flush_backlog()
                self.transport.write(data)
                send_now(self.transport)
            else:
                write_now(self.transport, data)  # one send, no epoll_ctl pair

    def write_sequence(self, pieces: list[bytes]) -> None:
        """In the reactor thread: write ``pieces`` (a large value's) in order."""
        with self.lock:
            if self._backlog:
                self._flush_backlog()
            self.transport.writeSequence(pieces)

    def _flush_backlog(self) -> None:
        backlog, self._backlog = self._backlog, []
        self.transport.write(b"".join(backlog))

    def _drain(self) -> None:
        """In the reactor thread: write what a calling thread's send left over."""
        with self.lock:
            if self._backlog:
                self._flush_backlog()
                send_now(self.transport)

    def close(self) -> None:
        """At the connection's loss (reactor thread): no more direct sends."""
        with self.lock:
            sock, self._sock = self._sock, None
            self._backlog = []
            if sock is not None:
                sock.close()

    # -- a calling thread -------------------------------------------------------

    def idle(self) -> bool:
        """
        Whether bytes sent now follow everything written before (call it
        holding :attr:`lock`): nothing buffered by the transport nor left
        over by a calling thread, the connection not closing.
        """
        t = self.transport
        # _tempDataLen first: doWrite fills dataBuffer from it before
        # clearing it, and empties dataBuffer only once it is sent.
        return (self._sock is not None and not self._backlog and not t._tempDataLen
                and not t.dataBuffer and not t.disconnecting and t.connected
                and self._established())

    def _established(self) -> bool:
        """Whether the daemon's side is still open (no FIN, no RST seen)."""
        assert self._sock is not None
        return peer_open(self._sock)

    def send_from_thread(self, data: bytes) -> None:
        """
        In a calling thread, holding :attr:`lock`, after :meth:`idle` said
        yes: put ``data`` into the kernel; what it does not take goes to the
        reactor thread, ahead of any later write.
        """
        assert self._sock is not None and self._call_from_thread is not None
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # A broken connection: the reactor thread's write meets the same
            # error and closes it, which fails the pending requests.
            sent = 0
        if sent < len(data):
            self._backlog.append(data[sent:])
            self._call_from_thread(self._drain)


__all__ = ["Sender", "peer_open"]
