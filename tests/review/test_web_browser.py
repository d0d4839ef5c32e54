"""The review app in a real browser: headless Chromium (Debian's chromium + chromium-driver) through Selenium.

Skipped when /usr/bin/chromium or /usr/bin/chromedriver (or selenium) is missing, unless
``$GRADGUARD_REQUIRE_BROWSER=1`` (then it fails); ``.ci/browser.sh`` installs them. With
``$GRADGUARD_SCREENSHOT_DIR`` set, a screenshot of the item page is saved there as ``review_item.png``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from gradguard.review import SQLiteReviewQueue  # noqa: E402
from gradguard.review.web import create_app  # noqa: E402
from gradguard.review.web.testing import CHROMEDRIVER, CHROMIUM, headless_chrome  # noqa: E402
from gradguard.testing.server import serve_app_in_thread  # noqa: E402

from ._web import ALICE, REVIEWERS, SHOWCASE_QUESTION, add_item, add_showcase_item  # noqa: E402

pytestmark = pytest.mark.browser

REQUIRE_ENV = "GRADGUARD_REQUIRE_BROWSER"
SCREENSHOT_ENV = "GRADGUARD_SCREENSHOT_DIR"


def _require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"{', '.join(missing)} missing; run bash .ci/browser.sh (and pip install selenium)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} (${REQUIRE_ENV}=1 makes the browser tests mandatory)")
        pytest.skip(message)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    _require_browser()
    browser = headless_chrome(tmp_path / "chrome-profile")
    browser.set_page_load_timeout(20)
    try:
        yield browser
    finally:
        browser.quit()


def _screenshot(browser: Any, name: str) -> None:
    folder = os.environ.get(SCREENSHOT_ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(1360, min(max(height + 40, 800), 4000))
    browser.save_screenshot(str(Path(folder) / name))
    browser.set_window_size(1360, 1000)


def test_sign_in_review_and_approve(driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    with SQLiteReviewQueue(tmp_path / "review.sqlite3") as store:
        item_id = add_showcase_item(store)
        for i in range(3):
            add_item(store, f"Other question {i}?")
        with serve_app_in_thread(create_app(store, REVIEWERS)) as url:
            wait = WebDriverWait(driver, 15)
            driver.get(url + "/")
            assert "Sign in" in driver.title and SHOWCASE_QUESTION not in driver.page_source

            driver.get(url + "/login")
            driver.find_element(By.ID, "token").send_keys(ALICE)
            driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]").click()
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.queue")))
            assert "Signed in as alice" in driver.find_element(By.CSS_SELECTOR, "header .who").text
            rows = driver.find_elements(By.CSS_SELECTOR, "table.queue tbody tr")
            assert len(rows) == 4
            assert driver.find_element(By.ID, "total").text == "4"

            driver.find_element(By.LINK_TEXT, SHOWCASE_QUESTION).click()
            wait.until(ec.presence_of_element_located((By.ID, "approve-form")))
            assert item_id in driver.current_url
            shaded = driver.find_elements(By.CSS_SELECTOR, "#answer .tok")
            assert len(shaded) > 10 and driver.find_elements(By.CSS_SELECTOR, "#answer .tok.l5")
            assert driver.find_element(By.ID, "legend").is_displayed()
            driver.find_element(By.CSS_SELECTOR, "details.messages > summary").click()  # show the context
            assert driver.find_element(By.CSS_SELECTOR, "details.role-user pre").is_displayed()
            _screenshot(driver, "review_item.png")

            driver.find_element(By.ID, "shade-entropy").click()
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#answer[data-shade='entropy']")))

            driver.find_element(By.ID, "approve-note").send_keys("Checked against §12.1; the refund clause is wrong.")
            driver.find_element(By.ID, "approve").click()
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".flash")))
            assert f"Item {item_id[:8]} approved." in driver.find_element(By.CSS_SELECTOR, ".flash").text

        item = store.get(item_id)
        assert (item.status, item.reviewer) == ("approved", "alice")
        assert item.verdict_note == "Checked against §12.1; the refund clause is wrong."
    assert time.monotonic() - started < 60
