"""Headless Chromium for the review app's browser test, its benchmark and the screenshot in the docs.

Serve the app with :func:`gradguard.testing.server.serve_app_in_thread`; drive it with :func:`headless_chrome`
(Debian's ``chromium`` and ``chromium-driver``, ``bash .ci/browser.sh``; ``pip install selenium``).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["headless_chrome", "CHROMIUM", "CHROMEDRIVER"]

#: Where Debian's packages put the browser and its WebDriver.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chrome(user_data_dir: str | os.PathLike[str], *, width: int = 1360, height: int = 1000) -> Any:
    """A Selenium ``webdriver.Chrome`` on headless Chromium with the given (new, empty) profile folder.

    The flags keep it from reaching out (the machine may have no network) and let it run as root in a
    container: ``--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage``, no background
    networking, component updates, sync or first-run page.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={os.fspath(user_data_dir)}", f"--window-size={width},{height}",
    ):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
