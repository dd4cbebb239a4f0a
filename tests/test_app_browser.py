"""The web app in a real headless Chromium (Debian's chromium + chromium-driver, installed by
``make setup`` through tools/setup_browser.sh): a render of the astronaut photo on the demo
checkpoint, and a text file as the portrait answered by one line in the page.

These tests fail, never skip, when the browser cannot start. ``FACTORPORTRAIT_CHROMIUM`` and
``FACTORPORTRAIT_CHROMEDRIVER`` name another browser and driver.
"""

import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image
from selenium.common.exceptions import TimeoutException

from factorportrait.app.browser import (BrowserError, free_port, open_page, start_browser,
                                        type_into, wait_for)

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"
WAIT_S = 300  # a render of 5 frames x 2 steps takes ~15 s here; the first loads the model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on checkpoints/demo, served on 127.0.0.1 (one thread of torch)."""
    from factorportrait.app import Renderer, launch

    torch.set_num_threads(1)
    renderer = Renderer(DEMO, tmp_path_factory.mktemp("app"))
    port = free_port()
    app = launch(renderer, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/", renderer
    app.close()


@pytest.fixture
def browser():
    """A fresh headless Chromium per test (0.8 s to start): no page state carries over."""
    try:
        driver = start_browser()
    except BrowserError as err:
        pytest.fail(str(err))
    yield driver
    driver.quit()


def test_the_page_renders_an_orbit_of_the_astronaut_and_serves_the_mp4(server, browser,
                                                                        tmp_path):
    from skimage import data

    from factorportrait.io.video import read_video

    url, renderer = server
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    find = open_page(browser, url)
    find("#portrait input[type=file]").send_keys(str(photo))
    wait_for(browser, "#reference-view img")
    find("#mode input[value=camera_only]").click()
    find("#trajectory input[value=orbit]").click()
    plot = wait_for(browser, "#trajectory-plot img").get_attribute("src")
    type_into(find("#frames input"), "5")
    wait_for(browser, "#trajectory-plot img",
             lambda image: image.get_attribute("src") != plot)
    type_into(find("#steps input"), "2")
    find("#render-button").click()
    video = wait_for(browser, "#result video", lambda element: element.get_attribute("src"),
                  WAIT_S)
    status = find("#status").text
    assert status.startswith("wrote ") and ": 5 frames, 64x64" in status
    served = tmp_path / "served.mp4"
    with urllib.request.urlopen(video.get_attribute("src"), timeout=30) as response:
        served.write_bytes(response.read())
    frames = read_video(served)
    assert frames.shape == (5, 64, 64, 3)
    names = sorted(Path(link.get_attribute("href")).name for link in
                   browser.find_elements("css selector", "#downloads a"))
    assert names == ["contact_sheet.png", "controls.safetensors", "render.mp4"]
    wait_for(browser, "#conditions img")
    shot = tmp_path / "app.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size == (1400, browser.execute_script("return window.innerHeight"))


def test_a_text_file_as_the_portrait_is_one_line_in_the_page(server, browser, tmp_path):
    url, _ = server
    text = tmp_path / "notes.txt"
    text.write_text("a shopping list, not a portrait")
    find = open_page(browser, url)
    find("#portrait input[type=file]").send_keys(str(text))
    try:
        wait_for(browser, "#portrait", lambda element: "notes" in element.text)
    except TimeoutException:
        browser.save_screenshot("/tmp/sel/upload_fail.png")
        raise AssertionError(find("#portrait").text + " | " + find("#status").text)
    find("#render-button").click()
    try:
        wait_for(browser, "#status", lambda element: "rendering" not in element.text and
                 "notes.txt is unreadable" in element.text, 60)
    except TimeoutException:
        browser.save_screenshot(str(tmp_path / "after_render.png"))
        raise AssertionError(f"after render the status reads {find('#status').text!r} "
                             f"(page: {tmp_path / 'after_render.png'})") from None
    error = find("#status").text
    assert error.startswith("error: image ") and "notes.txt is unreadable (truncated or " \
        "not an image?)" in error and "\n" not in error.strip()
    assert "Traceback" not in browser.page_source
    assert not browser.find_elements("css selector", "#result video[src]")
