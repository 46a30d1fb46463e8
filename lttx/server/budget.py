"""
The daemon-wide bound on memory held for connections (issue 19 finding 6):
:class:`BufferBudget`, ``--max-buffered``.

Each connection bounds what it holds by itself (a peer that does not read
its replies is not read either; an incomplete frame is closed after 30 s
without progress), but many connections together could still hold a lot: 40
clients asking for a 16 MiB value without reading, 10 sending 60 MiB of a
64 MiB frame.  The budget adds them up: the replies written to each
connection and not yet sent (the transport's buffer), and the incomplete
frame each is receiving, counted at its declared length from its first
bytes on.  Past the budget:

- a large frame (one the decoder collects: 256 KiB or more) that a
  connection starts to send is refused with ``limit`` and the connection is
  closed (the stream cannot be resynchronised without reading it);
- a large reply (256 KiB or more) is not sent: the request gets ``limit``
  instead, and the connection goes on.  Only reads have large replies (a
  read changed nothing: ask again later), but ``list_pop``, whose item
  (:data:`MUST_SEND`) is always sent.

Small frames and replies always pass, so ``hello``, small requests and
their replies, and ``status`` are served whatever the others hold.  Sums
are taken only when a large frame or reply is met, over the open
connections (a few ms for 10,000): nothing on the hot path of small frames
works for it.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

#: ``--max-buffered``: bytes all connections may hold together.
DEFAULT_MAX_BUFFERED = 512 * 1024 * 1024
#: Frames and replies from this size on are counted against the budget.
LARGE = 256 * 1024
#: The one command whose reply may be large and must be sent whatever the
#: budget: it changed something (the item it popped is in no other place).
#: Every other large reply is a read's, which can simply be asked again.
MUST_SEND = "list_pop"


def unsent_bytes(transport: Any) -> int:
    """Bytes written to ``transport`` and not yet taken by the kernel: Twisted's
    ``FileDescriptor`` buffers, and a TLS wrapper's buffer over them."""
    total = 0
    seen = 0
    while transport is not None and seen < 3:  # TLS over TCP at most
        seen += 1
        data = getattr(transport, "dataBuffer", None)
        if data is not None:
            total += (len(data) - getattr(transport, "offset", 0)
                      + getattr(transport, "_tempDataLen", 0))
        pending = getattr(transport, "_appSendBuffer", None)  # TLS before the handshake
        if pending:
            total += sum(map(len, pending))
        transport = getattr(transport, "transport", None)
    return total


class BufferBudget:
    """
    The sum of what the connections hold, against ``limit``.

    :param limit: bytes at most; 0 for no bound.
    """

    def __init__(self, limit: int = DEFAULT_MAX_BUFFERED) -> None:
        self.limit = limit
        self.frames_refused = 0
        self.replies_refused = 0
        self.connections: Iterable[Any] = ()

    def held(self, skip: Optional[Any] = None) -> int:
        """Bytes held for every connection (but ``skip``): unsent replies and
        incomplete frames (at their declared length)."""
        return sum(getattr(c, "held_bytes", 0) for c in self.connections if c is not skip)

    def refuse_frame(self, connection: Any, length: int) -> Optional[str]:
        """Why a frame of ``length`` bytes that ``connection`` starts to send is
        refused (None: it is admitted)."""
        if not self.limit or length < LARGE:
            return None
        held = self.held(skip=connection) + unsent_bytes(connection.transport)
        if held + length <= self.limit:
            return None
        self.frames_refused += 1
        return (f"the daemon holds {held} bytes for its connections; a frame of "
                f"{length} bytes would pass its --max-buffered of {self.limit}: "
                "send it again later")

    def refuse_reply(self, length: int) -> Optional[str]:
        """Why a reply of ``length`` bytes is not sent now (None: it is)."""
        if not self.limit or length < LARGE:
            return None
        held = self.held()
        if held + length <= self.limit:
            return None
        self.replies_refused += 1
        return (f"the daemon holds {held} bytes of replies not yet read and frames not "
                f"yet complete; this reply of {length} bytes would pass its "
                f"--max-buffered of {self.limit}: ask again later")

    def status(self) -> dict[str, int]:
        return {"held": self.held(), "limit": self.limit,
                "frames_refused": self.frames_refused,
                "replies_refused": self.replies_refused}


__all__ = ["BufferBudget", "DEFAULT_MAX_BUFFERED", "LARGE", "MUST_SEND", "unsent_bytes"]
