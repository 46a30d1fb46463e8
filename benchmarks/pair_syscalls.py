#!/usr/bin/env python3
"""
System calls per put+get pair of one blocking client, counted by ``strace -f -c``
(the same on a quiet or a loaded machine, unlike wall time).

    python3 benchmarks/pair_syscalls.py [--pairs 10000]          # apt-get install strace

It starts ``twistd -n lttx`` (``benchmarks/common.py``), then runs a client
process under ``strace -f -c`` twice, doing 1,000 and ``1,000 + --pairs``
put+get pairs of the 110-byte value of ``compare.py``; the difference of the
two counts over ``--pairs`` is the cost of one pair (start-up, imports and
the connection cancel out).  ``--daemon`` counts the daemon's calls instead
(``strace -p`` attached while the same clients run).  ``--instructions``
counts the client's instructions per pair instead, per thread (the calling
thread's is repeatable; the reactor thread's grows with the run's wall time,
its timers), under ``valgrind --tool=callgrind`` (the daemon runs as usual;
use fewer pairs: ``--pairs 2000``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ROOT, DaemonProcess  # noqa: E402

CLIENT = """
import sys
import lttx
c = lttx.connect("127.0.0.1", int(sys.argv[1]), token=sys.argv[2], timeout=60)
value = {"600000.SH": [10.23, 10.24, 1500, "浦发银行"]}
for _ in range(int(sys.argv[3])):
    c.put("pos", value)
    c.get("pos")
c.close()
"""


def counts(path: str) -> dict[str, int]:
    """``strace -c``'s table: calls per system call name."""
    found = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if match and match.group(2) != "total":
            found[match.group(2)] = int(match.group(1))
    return found


def run(daemon: DaemonProcess, pairs: int, out: str, of_daemon: "bool | None") -> dict[str, int]:
    client = [sys.executable, "-c", CLIENT, str(daemon.port), str(daemon.token), str(pairs)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    if of_daemon is None:  # instructions, per thread (the first is the calling one)
        # One hash seed for both runs: dict lookups (attributes, globals) cost
        # what their collisions make them cost, which varies with the seed.
        subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                        f"--callgrind-out-file={out}", *client],
                       env=dict(env, PYTHONHASHSEED="0"), check=True, capture_output=True)
        found = {}
        for path in sorted(Path(out).parent.glob(Path(out).name + "-*"),
                           key=lambda p: int(p.name.rsplit("-", 1)[1])):
            total = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
            name = "calling thread" if not found else f"thread {len(found) + 1}"
            found[name] = int(total.group(1)) if total else 0
        return found
    if not of_daemon:
        subprocess.run(["strace", "-f", "-c", "-o", out, *client], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return counts(out)
    tracer = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(daemon.process.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert tracer.stderr is not None
    deadline = time.monotonic() + 30
    while "attached" not in tracer.stderr.readline():  # strace says so once it traces
        if time.monotonic() > deadline:
            raise RuntimeError("strace did not attach")
    subprocess.run(client, env=env, check=True)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    return counts(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10000)
    parser.add_argument("--daemon", action="store_true", help="count the daemon's calls")
    parser.add_argument("--instructions", action="store_true",
                        help="count the client's instructions (callgrind) instead")
    args = parser.parse_args()
    which = None if args.instructions else args.daemon
    with DaemonProcess() as daemon, tempfile.TemporaryDirectory() as tmp:
        # A first client, not counted, writes any .pyc the counted two would
        # otherwise compile (the first of them only: the figure would drift).
        subprocess.run([sys.executable, "-c", CLIENT, str(daemon.port), str(daemon.token), "10"],
                       env=dict(os.environ, PYTHONPATH=ROOT), check=True)
        few = run(daemon, 1000, f"{tmp}/few", which)
        many = run(daemon, 1000 + args.pairs, f"{tmp}/many", which)
    per_pair = {name: (many[name] - few.get(name, 0)) / args.pairs for name in many}
    if args.instructions:
        print(f"client instructions per put+get pair: {sum(per_pair.values()):,.0f}")
        for name, n in per_pair.items():
            print(f"  {name:16s} {n:9,.0f}")
        return
    shown = {name: n for name, n in per_pair.items() if n >= 0.05}
    who = "daemon" if args.daemon else "client"
    print(f"{who} system calls per put+get pair: {sum(shown.values()):.1f}")
    for name, n in sorted(shown.items(), key=lambda item: -item[1]):
        print(f"  {name:16s} {n:6.2f}")


if __name__ == "__main__":
    main()
