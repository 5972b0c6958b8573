"""The console in a real browser: Debian's headless Chromium driven by Selenium, the app
served by uvicorn on 127.0.0.1. An operator logs in, sees the overview, and watches a
count change within 2 seconds of a change in the store; a station paused from its page
is paused in the store. Without Chromium this skips, and fails under CI=true."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import select

from db.engine import open_store, sqlite_url
from db.migrate import upgrade
from db.models import LinePause, Station
from db.secrets import Secret, SecretBox
from producers import principals as p
from producers.api.app import create_app
from producers.api.context import ApiContext
from schemas.pki import PkiConfig
from schemas.policy import Policy
from tests import factories

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PASSWORD = "correct horse battery staple"


def _need_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: ops/system-deps.sh test installs chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, object]]:
    store = open_store(sqlite_url(tmp_path))
    upgrade(store)
    pid = p.create_principal(store, "olga", roles=("operator",), by="tests")
    p.set_password(store, pid, Secret(PASSWORD), by="tests")
    with store.tx() as s:
        s.add(Station(id="ST1", line="default", instance="x", status="idle"))
        factories.credential(s, "ready")
    ctx = ApiContext(
        store=store,
        box=SecretBox(os.urandom(32)),
        policy=Policy(),
        pki=PkiConfig(),
        crl_dir=tmp_path / "crl",
        ca_chain=tmp_path / "ca-chain.pem",
        rejects_dir=tmp_path / "rejects",
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.dispose()


@pytest.fixture
def browser() -> Iterator[object]:
    _need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver, element_id: str) -> str | None:
    # Read in one script: the poller may swap the element out between a find and a read.
    script = "var e = document.getElementById(arguments[0]); return e ? e.textContent : null;"
    found = driver.execute_script(script, element_id)
    return None if found is None else str(found).strip()


def test_an_operator_logs_in_sees_the_overview_and_a_count_change_within_2_s(served, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, store = served
    browser.get(f"{base}/console")  # no session: sent to the login form
    WebDriverWait(browser, 10).until(lambda d: "/console/login" in d.current_url)
    browser.find_element(By.NAME, "name").send_keys("olga")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(browser, 10).until(lambda d: _text(d, "cards-total") is not None)
    assert _text(browser, "cards-total") == "1"
    with store.tx() as s:
        factories.credential(s, "ready")
        factories.credential(s, "ready")
    changed = time.monotonic()
    WebDriverWait(browser, 2.0, poll_frequency=0.05).until(lambda d: _text(d, "cards-total") == "3")
    assert time.monotonic() - changed <= 2.0

    # Pause the station from its page (the button POSTs with the CSRF header).
    browser.get(f"{base}/console/stations")

    def click_pause(d: object) -> bool:
        d.find_element(By.CSS_SELECTOR, 'button[data-post="/stations/ST1/pause"]').click()
        return True

    # The poller may swap the button out between the find and the click: find it again.
    WebDriverWait(browser, 5, ignored_exceptions=(StaleElementReferenceException,)).until(
        click_pause
    )
    WebDriverWait(browser, 5).until(lambda d: d.switch_to.alert).accept()

    def paused(_: object) -> bool:
        with store.read() as s:
            return s.scalars(select(LinePause)).first() is not None

    WebDriverWait(browser, 5).until(paused)
    WebDriverWait(browser, 3).until(lambda d: "paused" in (_text(d, "station-ST1") or ""))
