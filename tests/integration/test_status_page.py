"""The live status page on real components: served by the metrics hub at /status, it loads in headless Chromium
(Debian's chromium, driven through /usr/bin/chromedriver by selenium) without script errors and, while events flow
through the API, shows non-zero throughput, the partitions' lag, the breakers and the workers after a refresh.

Set EVENTPIPE_STATUS_SCREENSHOT=<path.png> to keep a screenshot of the page taken under the test's load.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from cluster.observability.endpoint import MetricsEndpoint
from cluster.observability.status_page import StatusPage
from tests.factories import valid_event
from tests.pipeline import Pipeline, unique_prefix

pytestmark = pytest.mark.integration

LOAD_BATCH = 50
LOAD_INTERVAL_S = 0.1
LOAD_MAX_S = 90.0


def _browser_binaries() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are needed (Debian packages chromium, chromium-driver: `make tools`)")
    return chromium, driver


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium, driver = _browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1150")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium must not try to download a driver (there is no internet).
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


class Load:
    """POSTs batches of valid events in a background thread until stopped (bounded in count and time)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self._base_url = base_url
        self._headers = headers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-page-load", daemon=True)
        self.accepted = 0
        self.failures: list[str] = []

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        prefix, rng, n = unique_prefix("status"), random.Random(4), 0
        deadline = time.monotonic() + LOAD_MAX_S
        with httpx.Client(base_url=self._base_url, headers=self._headers, timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                batch = [valid_event(prefix, n + i, rng) for i in range(LOAD_BATCH)]
                n += LOAD_BATCH
                try:
                    reply = client.post("/events/batch", json=batch)
                except httpx.HTTPError as exc:  # kept for the test to see: a thread's exception would be lost
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if reply.status_code == 202:
                    self.accepted += reply.json()["accepted"]
                else:
                    self.failures.append(f"{reply.status_code} {reply.text[:200]}")
                self._stop.wait(LOAD_INTERVAL_S)


def _value(browser: WebDriver, element_id: str) -> float | None:
    raw = browser.find_element(By.ID, element_id).get_attribute("data-value")
    return float(raw) if raw else None


def _refreshes(browser: WebDriver) -> int:
    return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-refreshes"))


def _wait_for(browser: WebDriver, what: str, condition, timeout_s: float = 60.0) -> None:
    try:
        WebDriverWait(browser, timeout_s, poll_frequency=0.25).until(lambda b: condition(b))
    except TimeoutException:
        body = browser.find_element(By.TAG_NAME, "body").text[:2000]
        pytest.fail(f"status page never showed {what} within {timeout_s:.0f}s; the page showed:\n{body}")


def test_status_page_shows_non_zero_throughput_while_events_flow(pipeline: Pipeline, browser: WebDriver):
    # given the status page open before the test's events flow (the totals count every earlier test's events too)
    browser.get(f"{pipeline.metrics_url}/status")
    assert browser.title == "eventpipe status"
    _wait_for(browser, "a first refresh", lambda b: _refreshes(b) >= 1)
    received_before = _value(browser, "received-total") or 0.0
    processed_before = _value(browser, "processed-total") or 0.0
    # when events flow through the API
    with Load(pipeline.base_url, pipeline.headers) as load:
        # and the status page has refreshed
        _wait_for(browser, "two more refreshes", lambda b: _refreshes(b) >= 3)
        _wait_for(
            browser,
            "events received and processed per second",
            lambda b: (_value(b, "received-rate") or 0) > 0 and (_value(b, "processed-rate") or 0) > 0,
        )
        refreshes_seen = _refreshes(browser)
        _wait_for(browser, "another refresh", lambda b: _refreshes(b) > refreshes_seen)
        screenshot = os.environ.get("EVENTPIPE_STATUS_SCREENSHOT")
        if screenshot:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(screenshot)

        # then the page shows the flow and the health of the cluster, and no script failed
        assert load.accepted >= LOAD_BATCH and load.failures == [], load.failures
        _wait_for(
            browser,
            "the test's events in the totals",
            lambda b: (
                (_value(b, "received-total") or 0) > received_before
                and (_value(b, "processed-total") or 0) > processed_before
            ),
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "#throughput-by-type tbody tr[data-type]")
        assert {row.get_attribute("data-type") for row in rows} >= {"transaction", "sensor", "user_action"}
        latency = _value(browser, "latency-end_to_end-p99")
        assert latency is not None and latency > 0
        lag = browser.find_elements(By.CSS_SELECTOR, "#lag-partitions [data-topic]")
        expected = len(pipeline.settings.owned_topics()) * pipeline.settings.partitions
        assert len(lag) == expected
        lags = [float(cell.get_attribute("data-value")) for cell in lag]
        assert all(v.is_integer() and v >= 0 for v in lags), lags  # a count of records
        breakers = {
            pill.get_attribute("data-breaker"): pill.get_attribute("data-state")
            for pill in browser.find_elements(By.CSS_SELECTOR, "#breakers [data-breaker]")
        }
        assert {"kafka", "postgres"} <= set(breakers)
        assert _value(browser, "workers-total") >= expected
        assert _value(browser, "dlq-size") is not None
        assert _value(browser, "spool-depth") is not None
        assert browser.find_element(By.ID, "status-error").text == ""
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-js-errors") == "0"
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []


STUCK_EXPOSITION = "\n".join(
    [
        "# TYPE queue_lag gauge",
        'queue_lag{topic="events.ingest",partition="0"} 120',
        'queue_lag{topic="events.ingest",partition="1"} 0',
        "# TYPE partition_oldest_uncommitted_age_seconds gauge",
        'partition_oldest_uncommitted_age_seconds{topic="events.ingest",partition="0"} 95',
        'partition_oldest_uncommitted_age_seconds{topic="events.ingest",partition="1"} 0',
        "# TYPE partition_commit_failures_total counter",
        'partition_commit_failures_total{topic="events.ingest",partition="0",reason="unavailable"} 40',
    ]
)


def test_a_partition_stuck_on_its_commit_is_red_on_the_status_page(browser: WebDriver):
    # given metrics saying events.ingest[0] has held an uncommitted record for 95 s
    endpoint = MetricsEndpoint("127.0.0.1", 0, lambda: (STUCK_EXPOSITION + "\n").encode(), pages=[StatusPage().handle])
    assert endpoint.start()
    try:
        host, port = endpoint.address  # type: ignore[misc]
        # when the page is opened and has refreshed
        browser.get(f"http://{host}:{port}/status")
        _wait_for(browser, "a refresh", lambda b: _refreshes(b) >= 1)

        # then that partition, and only it, is marked stalled, in red, and counted
        stalled = browser.find_elements(By.CSS_SELECTOR, '#lag-partitions [data-topic][data-stalled="true"]')
        assert [(cell.get_attribute("data-partition"), cell.get_attribute("data-age")) for cell in stalled] == [
            ("0", "95")
        ]
        red = browser.execute_script("return getComputedStyle(document.documentElement).getPropertyValue('--red')")
        color = browser.execute_script("return getComputedStyle(arguments[0]).color", stalled[0])
        probe = browser.execute_script(
            "var s = document.createElement('span'); s.style.color = arguments[0]; document.body.append(s);"
            " var c = getComputedStyle(s).color; s.remove(); return c;",
            red.strip(),
        )
        assert color == probe
        assert _value(browser, "stalled-partitions") == 1
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-js-errors") == "0"
        assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    finally:
        endpoint.close()
