"""
File transfer throughput, by hand: upload and download of one file (1 GiB by
default) through a real ``twistd -n lttx`` on 127.0.0.1, next to a plain
``socket.sendfile`` copy over loopback (written to disk by the receiver) in
the same run, so the ratio means something on any machine.

    python3 benchmarks/files.py [--size-mib 1024] [--keep]

Every step is bounded (a transfer slower than 5 MiB/s aborts the run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import lttx  # noqa: E402

MiB = 1024 * 1024
TOKEN = "bench"


def make_file(path: str, size: int) -> str:
    md5 = hashlib.md5()
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(0, size, MiB):
            chunk = (i.to_bytes(8, "big") + block)[:min(MiB, size - i)]
            f.write(chunk)
            md5.update(chunk)
    return md5.hexdigest()


def start_daemon(data_dir: str) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; run()",
           "-n", "--pidfile=", "lttx", "--data-dir", data_dir, "--token", TOKEN,
           "--listen", "tcp:0:interface=127.0.0.1"]
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    deadline = time.monotonic() + 30
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"LTtx listening on .* at [\d.]+:(\d+)", line)
        if match:
            # Keep draining the log so the daemon never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in process.stdout],  # type: ignore
                             daemon=True).start()
            return process, int(match.group(1))
        if time.monotonic() > deadline:
            break
    process.kill()
    raise SystemExit("the daemon did not start")


def sendfile_copy(source: str, dest: str) -> float:
    """Seconds to copy ``source`` to ``dest`` over loopback with socket.sendfile."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    done = threading.Event()

    def receive() -> None:
        conn, _ = listener.accept()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        with conn, open(dest, "wb") as f:
            while True:
                n = conn.recv_into(buffer)
                if not n:
                    break
                f.write(view[:n])
            f.flush()
            os.fsync(f.fileno())
        done.set()

    CHUNK = 256 * 1024
    threading.Thread(target=receive, daemon=True).start()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock, open(source, "rb") as f:
        sock.sendfile(f)
    if not done.wait(600):
        raise SystemExit("sendfile copy did not finish")
    listener.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    size = args.size_mib * MiB
    timeout = max(60.0, size / (5 * MiB))
    work = tempfile.mkdtemp(prefix="lttx-bench-files-")
    daemon = None
    try:
        source = os.path.join(work, "source.bin")
        print(f"writing a {args.size_mib} MiB file ...", flush=True)
        expected = make_file(source, size)

        seconds = sendfile_copy(source, os.path.join(work, "sendfile-copy.bin"))
        baseline = size / MiB / seconds
        os.unlink(os.path.join(work, "sendfile-copy.bin"))

        daemon, port = start_daemon(os.path.join(work, "data"))
        client = lttx.connect("127.0.0.1", port, token=TOKEN, timeout=timeout)
        started = time.perf_counter()
        sent = client.send_file(source, resume=False)
        upload = size / MiB / (time.perf_counter() - started)
        assert sent["md5"] == expected, sent
        os.makedirs(os.path.join(work, "down"))
        started = time.perf_counter()
        received = client.recv_file("source.bin", os.path.join(work, "down"), resume=False)
        download = size / MiB / (time.perf_counter() - started)
        assert received["md5"] == expected, received
        client.close()

        print(f"file of {args.size_mib} MiB over 127.0.0.1 ({os.cpu_count()} CPUs)")
        print(f"  socket.sendfile copy (baseline): {baseline:8.1f} MiB/s")
        print(f"  lttx upload   (send_file)      : {upload:8.1f} MiB/s  "
              f"= {upload / baseline:.2f} x baseline")
        print(f"  lttx download (recv_file)      : {download:8.1f} MiB/s  "
              f"= {download / baseline:.2f} x baseline")
        print("  (both ends write to the same disk; both lttx directions include MD5 on "
              "each end and an fsync)")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(20)
        if args.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
