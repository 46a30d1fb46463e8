"""
A DataFrame of 1,000,000 rows (float, int, categorical columns) stored and
read back three ways, in one run on this machine:

- ``lttx``: ``c.put(name, df)`` then ``c.get(name)`` through a real daemon,
  its journal at the default ``--fsync everysec`` and at ``--fsync no`` (as
  the Redis below, which persists nothing); Arrow IPC inside a MessagePack
  extension type;
- ``redis-py + pickle``: ``SET``/``GET`` of ``pickle.dumps(df, protocol=5)``
  on a ``redis-server`` started here (no persistence) -- the workaround the
  issue replaces, which runs code from the network on ``loads``;
- ``parquet``: ``df.to_parquet`` / ``pd.read_parquet`` on local disk
  (pyarrow, snappy), the page cache warm.

Then the large-frame path: a frame of about 100 MB put and got through a
daemon with ``--max-frame 256MiB``, with the daemon's resident memory before
and after, and the client's peak.

    python3 benchmarks/dataframes.py [--rows 1000000] [--repeat 5]

The machine is shared: the figures are indicative.  Each figure is the
median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import pandas as pd

from common import ROOT, DaemonProcess, start_redis, table  # type: ignore[import-not-found]

sys.path.insert(0, ROOT)

import lttx  # noqa: E402
from lttx.client.dataframes import default, ext_hook  # noqa: E402
from lttx.wire import codec  # noqa: E402


def frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    symbols = [f"{600000 + i:06d}.SH" for i in range(50)]
    return pd.DataFrame({
        "px": rng.normal(10.0, 1.0, rows),
        "qty": rng.integers(0, 10_000, rows, dtype="int64"),
        "symbol": pd.Categorical.from_codes(rng.integers(0, 50, rows), categories=symbols),
    })


def median_ms(repeat: int, run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def bench_lttx(df: pd.DataFrame, repeat: int, fsync: str) -> list[Any]:
    with DaemonProcess("--fsync", fsync) as daemon:
        c = lttx.connect("127.0.0.1", daemon.port, token=daemon.token, timeout=120)
        c.put("bars", df)
        back = c.get("bars")
        pd.testing.assert_frame_equal(back, df)
        put = median_ms(repeat, lambda: c.put("bars", df))
        get = median_ms(repeat, lambda: c.get("bars"))
        c.close()
    size = len(codec.encode(df, default))
    return [f"lttx, --fsync {fsync}", f"{put:.0f}", f"{get:.0f}", f"{put + get:.0f}", mb(size)]


def bench_redis_pickle(df: pd.DataFrame, repeat: int) -> list[Any]:

    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed")
    tmp = tempfile.TemporaryDirectory()
    proc, _, r = start_redis(server, tmp.name)
    try:
        r.set("bars", pickle.dumps(df, protocol=5))
        pd.testing.assert_frame_equal(pickle.loads(r.get("bars")), df)
        put = median_ms(repeat, lambda: r.set("bars", pickle.dumps(df, protocol=5)))
        get = median_ms(repeat, lambda: pickle.loads(r.get("bars")))
        size = len(pickle.dumps(df, protocol=5))
        r.close()
    finally:
        proc.terminate()
        proc.wait(10)
        tmp.cleanup()
    return ["redis-py + pickle", f"{put:.0f}", f"{get:.0f}", f"{put + get:.0f}", mb(size)]


def bench_parquet(df: pd.DataFrame, repeat: int) -> list[Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bars.parquet")
        df.to_parquet(path)
        pd.testing.assert_frame_equal(pd.read_parquet(path), df)
        put = median_ms(repeat, lambda: df.to_parquet(path))
        get = median_ms(repeat, lambda: pd.read_parquet(path))
        size = os.path.getsize(path)
    return ["parquet, local disk", f"{put:.0f}", f"{get:.0f}", f"{put + get:.0f}", mb(size)]


def bench_codec(df: pd.DataFrame, repeat: int) -> list[Any]:
    """The client's share: encoding and decoding alone, in this process."""
    payload = codec.encode(df, default)
    enc = median_ms(repeat, lambda: codec.encode(df, default))
    dec = median_ms(repeat, lambda: codec.decode(payload, ext_hook))
    return ["(lttx encode/decode only)", f"{enc:.0f}", f"{dec:.0f}", f"{enc + dec:.0f}",
            mb(len(payload))]


def bench_large(repeat: int) -> str:
    rows = 4_200_000  # 3 float64 columns: about 100 MB
    rng = np.random.default_rng(1)
    df = pd.DataFrame({name: rng.normal(size=rows) for name in ("bid", "ask", "last")})
    size = len(codec.encode(df, default))
    with DaemonProcess("--max-frame", str(256 * 1024 * 1024)) as daemon:
        c = lttx.connect("127.0.0.1", daemon.port, token=daemon.token, timeout=300)
        idle = daemon.rss_kib()
        client_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        put = median_ms(repeat, lambda: c.put("big", df))
        held = daemon.rss_kib()
        get = median_ms(repeat, lambda: c.get("big"))
        client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        c.close()
    return (f"large frame: {mb(size)} on the wire; put {put:.0f} ms, get {get:.0f} ms; "
            f"daemon RSS {idle // 1024} MiB idle, {held // 1024} MiB holding it; "
            f"client peak RSS grew by {(client_peak - client_before) // 1024} MiB "
            f"(the frame itself is {(df.memory_usage().sum()) // 2**20} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-large", action="store_true", help="skip the 100 MB frame")
    args = parser.parse_args()
    df = frame(args.rows)
    print(f"{args.rows:,} rows (float64, int64, categorical of 50), "
          f"{df.memory_usage(deep=True).sum() / 1e6:.1f} MB in pandas; "
          f"median of {args.repeat}")
    rows = [bench_lttx(df, args.repeat, "everysec"), bench_lttx(df, args.repeat, "no"),
            bench_redis_pickle(df, args.repeat),
            bench_parquet(df, args.repeat), bench_codec(df, args.repeat)]
    print(table(rows, ["", "put ms", "get ms", "put+get ms", "size"]))
    if not args.no_large:
        print(bench_large(max(1, args.repeat // 2)))


if __name__ == "__main__":
    main()
