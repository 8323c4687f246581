"""A headless Chromium for the report tests (``-m browser``): Debian's ``chromium`` and
``chromium-driver`` driven by Selenium, with nothing downloaded.

``.ci/run`` installs both with apt-get. Screenshots go to ``tmp_path``, and also to
``$STORYLOOM_SCREENSHOTS`` when that is set, so CI can keep them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("STORYLOOM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STORYLOOM_CHROMEDRIVER", "/usr/bin/chromedriver")


@contextmanager
def headless_chromium(width: int = 1280, height: int = 1600) -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"no {', '.join(missing)}: apt-get install chromium chromium-driver "
            "(the browser tests never download a browser)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """The page's console messages at error level (failed loads included)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(driver: Any, path: Path) -> Path:
    """A full-page screenshot at ``path`` (and a copy under ``$STORYLOOM_SCREENSHOTS``)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 12000))
    driver.save_screenshot(str(path))
    keep = os.environ.get("STORYLOOM_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path
