"""
The status page in a real browser: Debian's headless ``chromium``, driven by
``selenium`` through ``chromedriver``, against a real daemon with traffic.
Every wait is bounded; the tests are skipped, saying why, only when the
browser or its driver is not installed (``.ci/run`` installs both).
"""

from __future__ import annotations

import shutil
import threading
from typing import Any, Callable

from twisted.trial.unittest import TestCase

from .common import HttpDaemon

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the test extra is not installed
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: Seconds any one wait of the browser may take.
WAIT = 30


def browser(testcase: TestCase, width: int = 1280, height: int = 1000) -> Any:
    """A headless Chromium, quit at the end of the test."""
    if webdriver is None:
        raise testcase.skipTest("selenium is not installed (pip install '.[test]')")
    if CHROMIUM is None or CHROMEDRIVER is None:
        raise testcase.skipTest("chromium and chromium-driver are not installed "
                                "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    testcase.addCleanup(driver.quit)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def wait(driver: Any, condition: Callable[[Any], Any], message: str) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.2,
                         ignored_exceptions=(WebDriverException,)).until(condition, message)


class Publisher:
    """A script pushing ticks on a channel, to one subscriber, until stopped."""

    def __init__(self, testcase: TestCase, daemon: HttpDaemon, channel: str) -> None:
        self.subscriber = daemon.daemon.connect(token="tok-admin")
        self.subscriber.subscribe(channel)
        self.publisher = daemon.daemon.connect(token="tok-admin")
        self.channel = channel
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        testcase.addCleanup(self.stop)

    def _run(self) -> None:
        i = 0
        while not self.stopped.is_set():
            for _ in range(20):
                self.publisher.push(f"k{i % 50}", {"px": i}, self.channel)
                i += 1
            self.stopped.wait(0.02)  # about a thousand messages a second

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def channel_rate(driver: Any, channel: str) -> float:
    """The rate the page's channel table shows for ``channel`` (0 if not shown)."""
    for row in driver.find_elements(By.CSS_SELECTOR, "#channels tbody tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        if cells and cells[0].text == channel:
            rate = row.find_element(By.CSS_SELECTOR, 'td[data-key="rate"]').text
            return float(rate.replace(",", ""))
    return 0.0


class StatusPageTests(TestCase):
    def test_page_shows_the_channel_its_rate_and_a_chart(self) -> None:
        """After /?token=, the page shows the test's channel with its rate, and draws charts."""
        daemon = HttpDaemon(self)
        Publisher(self, daemon, "hq_browser")
        driver = browser(self)
        driver.get(daemon.url + "/?token=tok-monitor")
        self.assertEqual(driver.current_url, daemon.url + "/")  # the token left the address
        wait(driver, lambda d: channel_rate(d, "hq_browser") > 0,
             "the channel and a rate above 0 in the channel table")
        tiles = driver.find_element(By.ID, "tiles").text
        self.assertIn("connections", tiles)
        self.assertIn("writable", tiles)
        wait(driver, lambda d: d.find_element(
            By.CSS_SELECTOR, "#chart-rates polyline.published").get_attribute("points"),
            "a line of published rates in the chart")
        self.assertTrue(driver.find_element(
            By.CSS_SELECTOR, "#chart-connections polyline").get_attribute("points"))
        peers = driver.find_element(By.ID, "connections").text
        self.assertIn("admin", peers)
        self.assertIn("journal", driver.find_element(By.ID, "parts").text)

    def test_login_cookie_flow(self) -> None:
        """The login form, then / without a token: the page; the cookie is HttpOnly, Strict."""
        daemon = HttpDaemon(self)
        driver = browser(self, 390, 844)  # a phone's screen
        driver.get(daemon.url + "/")
        self.assertIn("log in", driver.title)
        driver.find_element(By.ID, "token").send_keys("tok-monitor")
        driver.find_element(By.CSS_SELECTOR, "form button").click()
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#tiles .tile"),
             "the page after logging in")
        self.assertEqual(driver.current_url, daemon.url + "/")
        cookie = driver.get_cookie("lttx_session")
        self.assertTrue(cookie["httpOnly"])
        self.assertEqual(cookie["sameSite"], "Strict")
        self.assertEqual(driver.execute_script("return document.cookie"), "")  # HttpOnly
        driver.get(daemon.url + "/")  # again, no token anywhere
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#tiles .tile"),
             "the page on the session cookie alone")
        # Nothing sticks out of a phone's screen but the tables' own scroll boxes.
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        self.assertLessEqual(overflow, 0)

    def test_wrong_token_in_the_address_shows_the_form(self) -> None:
        """/?token=WRONG shows the login form with the reason, and sets no cookie."""
        daemon = HttpDaemon(self)
        driver = browser(self)
        driver.get(daemon.url + "/?token=tok-wrong")
        self.assertIn("wrong token", driver.find_element(By.CLASS_NAME, "reason").text)
        self.assertIsNone(driver.get_cookie("lttx_session"))


class EngineViewTests(TestCase):
    def test_page_shows_the_daemons_on_the_redis(self) -> None:
        """--engine redis: the page lists both daemons with their addresses, this one
        marked, heard from seconds ago, and the Redis replicas table."""
        from ..common import Daemon
        from ..redis_server import RedisServer

        redis = RedisServer(self)
        daemon = HttpDaemon(self, "--engine", "redis", "--redis", redis.url)
        other = Daemon(self, "--engine", "redis", "--redis", redis.url)
        driver = browser(self)
        driver.get(daemon.url + "/?token=tok-monitor")

        def both_listed(d: Any) -> bool:
            text = d.find_element(By.ID, "daemons").text
            return f"127.0.0.1:{daemon.daemon.port}" in text and \
                f"127.0.0.1:{other.port}" in text
        wait(driver, both_listed, "both daemons in the daemons table")
        rows = driver.find_elements(By.CSS_SELECTOR, "#daemons tbody tr")
        self.assertEqual(len(rows), 2)
        mine = [r.text for r in rows if f":{daemon.daemon.port}" in r.text][0]
        self.assertIn("(this one)", mine)
        self.assertRegex(mine, r"\d\.\d s ago")
        self.assertIn("master offset", driver.find_element(By.ID, "replication").text)
        self.assertIn("none", driver.find_element(By.ID, "replicas").text)
