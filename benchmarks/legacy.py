"""
An original ``tx.py`` publisher, unmodified, through the daemon's legacy port
to native subscribers, next to the original ``LTtx_server.py`` serving the
same publisher script to original subscribers, in the same run.

    python3 benchmarks/legacy.py [--messages 50000] [--subscribers 2]

The original client and server are loaded from ``../shared/seed-client`` (or
``/work/shared/seed-client``), never copied or edited: the server is imported
as a module and given its configuration (port, token) in place of its
``Config.txt``, and 127.0.0.1 in place of the LAN address it looks up.  It
needs ``psutil`` and ``tabulate`` (its own imports; not LTtx dependencies).

Each subscriber process reports when its first and last message came; the
rate is messages per second from the publisher's start to the last message
at the slowest subscriber.  Figures are indicative: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, DaemonProcess, table  # noqa: E402

TOKEN = "bench"


def seed_dir() -> str:
    for candidate in (Path(ROOT).parent / "shared" / "seed-client",
                      Path("/work/shared/seed-client")):
        if (candidate / "tx.py").is_file():
            return str(candidate)
    raise SystemExit("the original client (seed-client/tx.py) is not there")


ORIGINAL_SERVER = r"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("LTtx_server", sys.argv[1] + "/LTtx_server.py")
server = importlib.util.module_from_spec(spec)
spec.loader.exec_module(server)
server.load_config = lambda: {"port": sys.argv[2], "token": sys.argv[3], "zmq_port1": "0",
                              "zmq_port2": "0", "zmq_mode": "False", "set_cpu": ""}
server.get_local_ip = lambda: "127.0.0.1"
server.main()
"""

PUBLISHER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from tx import *
port, n = int(sys.argv[2]), int(sys.argv[4])
tx1 = txl("127.0.0.1", port, sys.argv[3], show=False)
tx1.start_tx()
sys.stdout.write("\nSTART %r\n" % time.time()); sys.stdout.flush()
for i in range(n):
    tx1.push("%06d.SH" % (i % 5000), "%d|10.23|10.24|10.22|10.25|1200|3400" % i, "hq")
while not tx1.tx_que.empty():
    time.sleep(0.01)
sys.stdout.write("\nSENT %r\n" % time.time()); sys.stdout.flush()
time.sleep(1)
os._exit(0)
"""

OLD_SUBSCRIBER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from tx import *
port, n = int(sys.argv[2]), int(sys.argv[4])
tx1 = txl("127.0.0.1", port, sys.argv[3], show=False)
tx1.start_txg("hq")
sys.stdout.write("\nREADY\n"); sys.stdout.flush()
tx1.Q.get()
first = time.time()
for _ in range(n - 1):
    tx1.Q.get()
sys.stdout.write("\nDONE %r %r\n" % (first, time.time())); sys.stdout.flush()
os._exit(0)
"""

NATIVE_SUBSCRIBER = r"""
import sys, time
import lttx
port, n = int(sys.argv[2]), int(sys.argv[4])
c = lttx.connect("127.0.0.1", port, token=sys.argv[3], timeout=60)
c.subscribe("hq")
print("READY", flush=True)
c.Q.get()
first = time.time()
for _ in range(n - 1):
    c.Q.get(timeout=120)
print("DONE", first, time.time(), flush=True)
c.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(script: str, port: int, n: int, cwd: str) -> "subprocess.Popen[str]":
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([sys.executable, "-c", script, seed_dir(), str(port), TOKEN,
                             str(n)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=cwd, env=env)


def wait_for(process: "subprocess.Popen[str]", word: str) -> list[str]:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(word):
            return line.split()
    raise RuntimeError(f"the process ended before {word}")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def run(port: int, subscriber_port: int, subscriber: str, n: int, count: int,
        cwd: str) -> dict[str, float]:
    subs = [spawn(subscriber, subscriber_port, n, cwd) for _ in range(count)]
    for s in subs:
        wait_for(s, "READY")
    time.sleep(0.5)  # the old client's push_mode handshake settles
    publisher = spawn(PUBLISHER, port, n, cwd)
    start = float(wait_for(publisher, "START")[1])
    sent = float(wait_for(publisher, "SENT")[1])
    ends = [float(wait_for(s, "DONE")[2]) for s in subs]
    for p in subs + [publisher]:
        p.wait(30)
    last = max(ends)
    return {"publish_rate": n / (sent - start), "delivered_rate": n / (last - start),
            "seconds": last - start}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--subscribers", type=int, default=2)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        legacy_port = free_port()
        with DaemonProcess("--legacy-listen", f"tcp:{legacy_port}:interface=127.0.0.1",
                           token=TOKEN) as daemon:
            wait_port(legacy_port)
            new = run(legacy_port, daemon.port, NATIVE_SUBSCRIBER, args.messages,
                      args.subscribers, cwd)
            both = run(legacy_port, legacy_port, OLD_SUBSCRIBER, args.messages,
                       args.subscribers, cwd)
        rows.append(["lttx --legacy-listen -> native subscribers", *fmt(new)])
        rows.append(["lttx --legacy-listen -> tx.py subscribers", *fmt(both)])
        old_port = free_port()
        server = subprocess.Popen([sys.executable, "-c", ORIGINAL_SERVER, seed_dir(),
                                   str(old_port), TOKEN], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT, cwd=cwd,
                                  env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        try:
            wait_port(old_port)
            old = run(old_port, old_port, OLD_SUBSCRIBER, args.messages, args.subscribers, cwd)
        finally:
            server.kill()
            server.wait()
        rows.append(["original LTtx_server.py -> tx.py subscribers", *fmt(old)])
    print(f"{args.messages} pushes from one original tx.py publisher, "
          f"{args.subscribers} subscribers")
    print(table(rows, ["server", "publisher msg/s", "delivered msg/s (slowest)", "seconds"]))
    print(json.dumps({"new": new, "new_old_subscribers": both, "old": old}))


def fmt(result: dict[str, float]) -> list[str]:
    return [f"{result['publish_rate']:,.0f}", f"{result['delivered_rate']:,.0f}",
            f"{result['seconds']:.2f}"]


if __name__ == "__main__":
    main()
