#!/usr/bin/env python3
"""
What each step of the hot paths costs, measured in-process with
``perf_counter_ns`` (wall time per operation; median of ``--repeat`` rounds).

    python3 benchmarks/probes.py [--repeat 5] [--only handoff,decode,...]

Steps:

- ``handoff``: a blocking call's trip into the client's reactor thread and
  back, with nothing done there (``EventLoop.run`` of a no-op): the waker,
  the reactor's turn, the wake of the waiting thread;
- ``handoff_deferred``: the same, the result arriving later as a Deferred
  (as a reply does);
- ``decode``: a subscriber's per-MESSAGE cost in ``ClientProtocol.dataReceived``
  (framing, msgpack, the Message tuple), for a 64 KiB read of ~110-byte ticks;
  ``decode_batch`` the same read as one MESSAGES frame (hello's ``batches``);
- ``queue``: ``MessageQueue.put_many`` of 100-message batches and ``get`` of each;
- ``queue_wake``: a message put by another thread to a ``get()`` already
  waiting for it (the Condition wake-up);
- ``publish``: the daemon's per-message work: ``ChannelRegistry.publish`` into
  a channel with one subscriber, and that subscriber's reader writing it
  (``ChannelReader.wake``, StringTransport);
- ``daemon_push``: the daemon's whole per-message cost of a PUBLISH frame:
  ``dataReceived`` of 64 KiB chunks (framing, decode, rights, the channel
  log) and the write to its one subscriber (StringTransports);
  ``daemon_push10`` the same with ten subscribers; ``daemon_push_batch`` and
  ``daemon_push10_batch`` with subscribers that read MESSAGES frames;
- ``stream_writer``: receiving a file, per 256 KiB chunk, without the write
  itself: ``StreamWriter`` on a real reactor thread with its jobs in the
  thread pool (the MD5, hand-offs, pauses, resumptions; every thread);
- ``request``: a put through the blocking client to a real ``twistd -n lttx``
  (p50 of single round trips); ``request_client_cpu`` and
  ``request_daemon_cpu``: the CPU time each process spends per put, which
  load on the machine moves far less than wall time.

These are the figures the issue asks for "before and after" each change;
they move with machine load, so compare runs made on the same machine.
``--instructions`` counts instead the CPU instructions per operation of the
in-process probes (decode, queue, publish, daemon_push, stream_writer) with valgrind's
callgrind, which load does not move: the figure to compare on a shared
machine (slow: about a minute per probe).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TICK = ("0000000000000000000|000000001|10.23|10.24|10.22|10.25|1200|3400|5600|7800|"
        "9000|1234567.89|093000000")


#: Operations done in the timed rounds of per_op (for --instructions).
OPS = [0]


def per_op(fn: Callable[[], int], repeat: int) -> float:
    """Median over ``repeat`` rounds of ns per operation; ``fn`` returns ops done."""
    rounds = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        ops = fn()
        rounds.append((time.perf_counter_ns() - t0) / ops)
        OPS[0] += ops
    return statistics.median(rounds)


#: The probes that run in this process alone (the others wait on threads or a daemon).
IN_PROCESS = ("decode", "decode_batch", "queue", "publish", "daemon_push", "daemon_push10",
              "daemon_push_batch", "daemon_push10_batch", "daemon_put", "daemon_get",
              "stream_writer")


def instructions(name: str) -> float:
    """
    Instructions per operation of an in-process probe, counted by
    ``valgrind --tool=callgrind``: the same figure on a quiet or a loaded
    machine.  The probe runs with 2 and with 6 rounds; start-up, imports and
    set-up cancel out in the difference.
    """
    import os
    import re
    import subprocess
    import tempfile

    counts = []
    for repeat in (2, 6):
        with tempfile.TemporaryDirectory() as tmp:
            # One hash seed for both runs: dict lookups cost what their
            # collisions make them cost, which varies with the seed.
            run = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
                 sys.executable, __file__, "--only", name, "--repeat", str(repeat),
                 "--print-ops"], capture_output=True, text=True, check=True,
                env=dict(os.environ, PYTHONHASHSEED="0"))
        collected = int(re.findall(r"Collected : (\d+)", run.stderr)[-1])
        ops = int(re.findall(r"^ops (\d+)$", run.stdout, re.M)[-1])
        counts.append((collected, ops))
    (a, ops_a), (b, ops_b) = counts
    return (b - a) / (ops_b - ops_a)


def probe_handoff(repeat: int) -> float:
    from lttx.client.eventloop import EventLoop

    loop = EventLoop()
    run = loop.run

    def nothing() -> None:
        return None

    def rounds() -> int:
        for _ in range(5000):
            run(nothing)
        return 5000

    try:
        return per_op(rounds, repeat)
    finally:
        loop.stop()


def probe_handoff_deferred(repeat: int) -> float:
    from twisted.internet.defer import Deferred

    from lttx.client.eventloop import EventLoop

    loop = EventLoop()
    run = loop.run

    def later() -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        loop.reactor.callLater(0, d.callback, None)
        return d

    def rounds() -> int:
        for _ in range(3000):
            run(later)
        return 3000

    try:
        return per_op(rounds, repeat)
    finally:
        loop.stop()


def probe_decode(repeat: int, batches: bool = False) -> float:
    from twisted.internet.testing import StringTransport

    from lttx.client.protocol import ClientProtocol
    from lttx.wire import codec
    from lttx.wire.framing import PREFIX

    frames = []
    for i in range(600):
        payload = codec.encode([codec.MESSAGE, "hq", f"{600000 + i}.SH", TICK, 70000 + i])
        frames.append(PREFIX.pack(len(payload)) + payload)
    if batches:
        from lttx.wire.batches import batch_frames, message_head

        frames = batch_frames(message_head("hq"), frames)
    chunk = b"".join(frames)
    got: list[Any] = []
    proto = ClientProtocol(on_message=got.append)
    proto.makeConnection(StringTransport())
    proto.set_receivers(got.extend, lambda *a: None) if _takes_two(proto) else \
        proto.set_receivers(got.extend)

    def rounds() -> int:
        for _ in range(20):
            proto.dataReceived(chunk)
        n = len(got)
        got.clear()
        return n

    return per_op(rounds, repeat)


def probe_decode_batch(repeat: int) -> float:
    """decode, the 600 messages of each read in one MESSAGES frame (hello's
    ``batches`` option)."""
    return probe_decode(repeat, batches=True)


def _takes_two(proto: Any) -> bool:
    import inspect

    return len(inspect.signature(proto.set_receivers).parameters) >= 2


def probe_queue(repeat: int) -> float:
    from lttx.client.messages import Message, MessageQueue

    q = MessageQueue()
    batch = [Message("hq", "k", TICK, i) for i in range(100)]
    get = q.get

    def rounds() -> int:
        for _ in range(200):
            q.put_many(batch)
            for _ in range(100):
                get()
        return 20000

    return per_op(rounds, repeat)


def probe_queue_wake(repeat: int) -> float:
    """ns from put_many in one thread to the return of a waiting get() in another."""
    from lttx.client.messages import Message, MessageQueue

    q = MessageQueue()
    message = Message("hq", "k", TICK, 0)
    stamps: list[int] = []
    ready = threading.Event()
    n = 2000

    def consumer() -> None:
        for _ in range(n):
            ready.set()
            q.get()
            stamps.append(time.perf_counter_ns())

    results = []
    for _ in range(repeat):
        stamps.clear()
        sent: list[int] = []
        thread = threading.Thread(target=consumer)
        thread.start()
        for _ in range(n):
            ready.wait()
            ready.clear()
            time.sleep(0.00005)  # let it block in get()
            sent.append(time.perf_counter_ns())
            q.put_many([message])
        thread.join()
        results.append(statistics.median(b - a for a, b in zip(sent, stamps)))
    return statistics.median(results)


def probe_publish(repeat: int) -> float:
    from twisted.internet.testing import StringTransport

    from lttx.server.reader import ChannelReader
    from lttx.state.channels import ChannelRegistry

    registry = ChannelRegistry()
    transport = StringTransport()
    reader = ChannelReader(transport, registry)
    registry.subscribe(reader, ["hq"])

    def rounds() -> int:
        for i in range(20000):
            registry.publish("hq", "600000.SH", TICK)
            if i % 100 == 99:
                transport.clear()
        return 20000

    return per_op(rounds, repeat)


def probe_daemon_push(repeat: int, subscribers: int = 1, batches: bool = False) -> float:
    """The daemon's whole per-PUBLISH cost: LTtxServerProtocol.dataReceived of
    64 KiB chunks of PUBLISH frames (framing, decode, rights, the log) and the
    subscribers' writes of them (StringTransports)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from lttx.server.factory import LTtxFactory
    from lttx.server.state import ServerState
    from lttx.state.auth import TokenAuthenticator
    from lttx.state.store import MemoryStore
    from lttx.wire import codec
    from lttx.wire.framing import PREFIX

    factory = LTtxFactory(ServerState(MemoryStore(), TokenAuthenticator("t")))

    def connected(options: dict[str, Any]) -> tuple[Any, StringTransport]:
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        hello = codec.encode([codec.REQUEST, 0, "hello", ["t", options]])
        proto.dataReceived(PREFIX.pack(len(hello)) + hello)
        transport.clear()
        return proto, transport

    publisher, _ = connected({})
    sub_transports = []
    for _ in range(subscribers):
        subscriber, sub_transport = connected({"batches": True} if batches else {})
        request = codec.encode([codec.REQUEST, 1, "subscribe", [["hq"], None, {}]])
        subscriber.dataReceived(PREFIX.pack(len(request)) + request)
        sub_transports.append(sub_transport)
    frames = []
    for i in range(600):
        payload = codec.encode([codec.PUBLISH, "hq", f"{600000 + i}.SH", TICK])
        frames.append(PREFIX.pack(len(payload)) + payload)
    chunk = b"".join(frames)

    def rounds() -> int:
        for _ in range(40):
            publisher.dataReceived(chunk)
            for sub_transport in sub_transports:
                sub_transport.clear()
        return 40 * 600

    return per_op(rounds, repeat)


def _daemon_requests(repeat: int, command: str) -> float:
    """The daemon's whole cost of one request from a client waiting for each
    reply: ``dataReceived`` of the one frame, the store (a journalled
    ``DurableStore``, ``--fsync everysec``, its end-of-turn write included:
    the clock's ``callLater(0)`` is run as the reactor would) and the reply
    written (StringTransport)."""
    import tempfile

    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from lttx.diskio import InlineLane
    from lttx.server.factory import LTtxFactory
    from lttx.server.state import ServerState
    from lttx.state.auth import TokenAuthenticator
    from lttx.storage.durable import DurableStore
    from lttx.wire import codec
    from lttx.wire.framing import PREFIX

    clock = Clock()
    tmp = tempfile.TemporaryDirectory()
    store = DurableStore.open(tmp.name, "everysec", clock, InlineLane(), InlineLane())
    factory = LTtxFactory(ServerState(store, TokenAuthenticator("t"), clock=clock))
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    proto.makeConnection(transport)
    hello = codec.encode([codec.REQUEST, 0, "hello", ["t", {}]])
    proto.dataReceived(PREFIX.pack(len(hello)) + hello)
    value = {"600000.SH": [10.23, 10.24, 1500, "浦发银行"]}
    args = ["pos", value] if command == "put" else ["pos"]
    frames = []
    for i in range(1, 1001):
        payload = codec.encode([codec.REQUEST, i, command, args])
        frames.append(PREFIX.pack(len(payload)) + payload)
    put = codec.encode([codec.REQUEST, 1, "put", ["pos", value]])
    proto.dataReceived(PREFIX.pack(len(put)) + put)
    clock.advance(0)
    received, advance, clear = proto.dataReceived, clock.advance, transport.clear

    def rounds() -> int:
        for _ in range(4):
            for frame in frames:
                received(frame)
                advance(0)
            clear()
        assert transport.value() == b"" and len(store) == 1
        return 4000

    try:
        return per_op(rounds, repeat)
    finally:
        store._file.close()
        tmp.cleanup()


def probe_daemon_put(repeat: int) -> float:
    """The daemon's cost of one journalled put (see _daemon_requests)."""
    return _daemon_requests(repeat, "put")


def probe_daemon_get(repeat: int) -> float:
    """The daemon's cost of one get."""
    return _daemon_requests(repeat, "get")


def probe_daemon_push10(repeat: int) -> float:
    """daemon_push with ten subscribers of the channel (1->10 fan-out)."""
    return probe_daemon_push(repeat, 10)


def probe_daemon_push_batch(repeat: int) -> float:
    """daemon_push, the subscriber reading MESSAGES frames (hello's ``batches``)."""
    return probe_daemon_push(repeat, 1, batches=True)


def probe_daemon_push10_batch(repeat: int) -> float:
    """daemon_push10, the subscribers reading MESSAGES frames."""
    return probe_daemon_push(repeat, 10, batches=True)


def probe_stream_writer(repeat: int) -> float:
    """
    What receiving a file costs per 256 KiB chunk besides the write itself
    (a null file): ``StreamWriter.write`` on a real reactor thread, four
    chunks per reactor turn as from 1 MiB reads, its jobs in the reactor's
    thread pool, the MD5 (the slower job, as in a transfer: about 1.2 M
    instructions per chunk of its own), pauses and resumptions at the water
    marks, counted in every thread.
    """
    from twisted.internet.defer import Deferred

    from lttx.client.eventloop import EventLoop
    from lttx.diskio import StreamWriter, pool_runner

    class Null:
        def write(self, data: bytes) -> None:
            return None

        def fileno(self) -> int:
            raise OSError("not a file")

    loop = EventLoop()
    reactor = loop.reactor
    chunk = bytes(256 * 1024)
    count = 512

    def feed() -> "Deferred[None]":
        done: Deferred[None] = Deferred()

        class Producer:
            paused = False
            finishing = False
            left = count

            def pauseProducing(self) -> None:
                self.paused = True

            def resumeProducing(self) -> None:
                self.paused = False
                self.turn()

            def turn(self) -> None:
                for _ in range(4):
                    if self.paused or not self.left:
                        break
                    writer.write(chunk)
                    self.left -= 1
                if not self.left:
                    if not self.finishing:  # (a resumption after the last chunk)
                        self.finishing = True
                        writer.drained().chainDeferred(done)
                elif not self.paused:
                    reactor.callLater(0, self.turn)

        producer = Producer()
        writer = StreamWriter(Null(), hashlib.md5(), pool_runner(reactor), producer,
                              lambda failure: done.errback(failure))
        producer.turn()
        return done

    def rounds() -> int:
        loop.run(feed)
        return count

    try:
        return per_op(rounds, repeat)
    finally:
        loop.stop()


def _cpu_ns(pid: int) -> int:
    """User + system CPU time of a process, in ns (from /proc)."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _requests(repeat: int, measure: str) -> float:
    import os

    import lttx
    from common import DaemonProcess

    with DaemonProcess() as daemon:
        client = lttx.connect("127.0.0.1", daemon.port, token=daemon.token)
        try:
            client.put("n", 0)
            rounds = []
            for _ in range(repeat):
                lat = []
                cpu0 = _cpu_ns(os.getpid()), _cpu_ns(daemon.process.pid)
                for i in range(2000):
                    t0 = time.perf_counter_ns()
                    client.put("n", i)
                    lat.append(time.perf_counter_ns() - t0)
                cpu1 = _cpu_ns(os.getpid()), _cpu_ns(daemon.process.pid)
                if measure == "wall":
                    rounds.append(statistics.median(lat))
                elif measure == "client_cpu":
                    rounds.append((cpu1[0] - cpu0[0]) / 2000)
                else:
                    rounds.append((cpu1[1] - cpu0[1]) / 2000)
            return statistics.median(rounds)
        finally:
            client.close()


def probe_request(repeat: int) -> float:
    return _requests(repeat, "wall")


def probe_request_client_cpu(repeat: int) -> float:
    """CPU time (both threads of the client process) per put: steady under load."""
    return _requests(repeat, "client_cpu")


def probe_request_daemon_cpu(repeat: int) -> float:
    """The daemon's CPU time per put."""
    return _requests(repeat, "daemon_cpu")


PROBES = {name[len("probe_"):]: f for name, f in globals().items() if name.startswith("probe_")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default=",".join(PROBES))
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per op under valgrind (in-process probes only)")
    parser.add_argument("--print-ops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in args.only.split(","):
        if args.instructions:
            if name in IN_PROCESS:
                print(f"{name:18s} {instructions(name):10,.0f} instructions/op", flush=True)
            continue
        ns = PROBES[name](args.repeat)
        print(f"{name:18s} {ns / 1000:8.2f} µs/op", flush=True)
    if args.print_ops:
        print(f"ops {OPS[0]}")


if __name__ == "__main__":
    main()
