"""
Take the README's screenshot of the status page (docs/status-page.png).

Starts a daemon with ``--http`` and a roles file, runs a small trading-day
scenario on it for a while (a feed on ``hq_center`` to two strategies, orders,
a chat, some variables and a file), then opens the page in headless Chromium
(selenium + Debian's chromium-driver) and saves a full-page screenshot::

    python3 contrib/status_page_screenshot.py [--seconds 120] [--out docs/status-page.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lttx  # noqa: E402

ROLES = {"tokens": [
    {"name": "admin", "token": "demo-admin", "rights": ["all"]},
    {"name": "md-feed", "token": "demo-feed", "rights": ["publish:hq_*", "publish:chat"]},
    {"name": "strategy", "token": "demo-strategy",
     "rights": ["read", "write:orders_*", "write:pos_*", "subscribe:hq_*", "subscribe:chat",
                "publish:orders"]},
    {"name": "grafana", "token": "demo-monitor", "rights": ["monitor"]},
]}


def start_daemon(data: str) -> tuple[subprocess.Popen[str], int, int]:
    roles = os.path.join(data, "tokens.json")
    with open(roles, "w", encoding="utf-8") as f:
        json.dump(ROLES, f)
    daemon = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "lttx", "--listen", "tcp:0:interface=127.0.0.1", "--token-file", roles,
         "--data-dir", os.path.join(data, "d"), "--http", "tcp:0:interface=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"))
    port = http = 0
    for line in daemon.stdout:  # type: ignore[union-attr]
        if found := re.search(r"LTtx listening on .* at [\d.]+:(\d+)", line):
            port = int(found.group(1))
        if found := re.search(r"LTtx HTTP status page on .* at [\d.]+:(\d+)", line):
            http = int(found.group(1))
        if port and http:
            break
    threading.Thread(target=lambda: [None for _ in daemon.stdout],  # type: ignore[union-attr]
                     daemon=True).start()
    return daemon, port, http


def feed(port: int, channel: str, rate: float, stop: threading.Event) -> None:
    client = lttx.connect("127.0.0.1", port, token="demo-feed" if channel != "orders"
                          else "demo-strategy")
    start, sent = time.monotonic(), 0
    while not stop.is_set():
        elapsed = time.monotonic() - start
        # A rate swinging between 0.4x and 1.6x the mean, without a burst.
        target = rate * (elapsed + 9 * math.sin(elapsed / 15))
        while sent < target:
            client.push(f"60{sent % 300:04d}.SH", {"px": 10 + sent % 7 / 100, "n": sent}, channel)
            sent += 1
        stop.wait(0.01)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "status-page.png"))
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="lttx-shot-")
    daemon, port, http = start_daemon(data)
    stop = threading.Event()
    try:
        strategies = [lttx.connect("127.0.0.1", port, token="demo-strategy") for _ in range(2)]
        for s in strategies:
            s.subscribe("hq_center")
            s.subscribe("chat")
        risk = lttx.connect("127.0.0.1", port, token="demo-admin")
        risk.subscribe("orders")
        for i in range(40):
            risk.put(f"pos_{600000 + i}.SH", {"qty": 100 * i, "avg": 10.0 + i / 10})
        sample = os.path.join(data, "report_2026-12-01.csv")
        Path(sample).write_bytes(b"symbol,qty\n" + b"600000.SH,100\n" * 20000)
        risk.send_file(sample)
        threads = [threading.Thread(target=feed, args=(port, ch, rate, stop), daemon=True)
                   for ch, rate in (("hq_center", 1500.0), ("orders", 40.0), ("chat", 2.0))]
        for t in threads:
            t.start()

        def drain() -> None:
            while not stop.is_set():
                for s in strategies + [risk]:
                    while s.Q.qsize():
                        s.Q.get()
                stop.wait(0.05)

        threading.Thread(target=drain, daemon=True).start()
        time.sleep(args.seconds)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1280,900", "--hide-scrollbars"):
            options.add_argument(a)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(f"http://127.0.0.1:{http}/?token=demo-monitor")
            time.sleep(5)  # a few polls: the tables and charts filled
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1280, height + 200)
            time.sleep(2.5)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
        print(f"saved {args.out}")
    finally:
        stop.set()
        daemon.terminate()
        daemon.wait(20)


if __name__ == "__main__":
    main()
