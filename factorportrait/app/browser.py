"""Drive the app's page in a headless Chromium through selenium (the browser tests and
``tools/app_screenshot.py``): the system's ``chromium`` and ``chromedriver`` (Debian's
``chromium`` and ``chromium-driver``, installed by tools/setup_browser.sh), or those named by
``FACTORPORTRAIT_CHROMIUM`` and ``FACTORPORTRAIT_CHROMEDRIVER``. Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any, Callable


class BrowserError(RuntimeError):
    """The headless browser is missing or did not start (one line: what and how to fix)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_browser(width: int = 1400, height: int = 1700):
    """A headless Chromium ``selenium`` driver with a ``width × height`` window."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = os.environ.get("FACTORPORTRAIT_CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    driver_path = os.environ.get("FACTORPORTRAIT_CHROMEDRIVER") or shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise BrowserError("no chromium / chromedriver on PATH: run `make setup` (tools/"
                           "setup_browser.sh installs Debian's chromium and chromium-driver)")
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    try:
        return webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as err:  # noqa: BLE001 - any start failure is this one error
        raise BrowserError(f"headless Chromium ({binary}, driver {driver_path}) did not "
                           f"start: {str(err).splitlines()[0]}") from err


def wait_for(browser, css: str, until: Callable[[Any], Any] = lambda element: True,
             seconds: float = 60):
    """The first element matching ``css`` for which ``until(element)`` holds, waiting up to
    ``seconds``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(page):
        return next((element for element in page.find_elements(By.CSS_SELECTOR, css)
                     if until(element)), False)
    return WebDriverWait(browser, seconds).until(found)


def open_page(browser, url: str) -> Callable[[str], Any]:
    """Load the app at ``url`` and wait for it; returns ``find(css) -> element``."""
    from selenium.webdriver.common.by import By

    browser.get(url)
    wait_for(browser, "#portrait input[type=file]")
    return lambda css: browser.find_element(By.CSS_SELECTOR, css)


def type_into(element, text: str) -> None:
    """Replace a text or number field's value with ``text`` and leave the field."""
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(text)
    element.send_keys(Keys.TAB)
