"""A screenshot of the web app after a render, for the docs (docs/app.md, README).

    python tools/app_screenshot.py [--out docs/images/app.png] [--checkpoint checkpoints/demo]

Serves the app on a free local port, opens it in headless Chromium (factorportrait.app.browser),
picks the demo's held-out identity, renders ``camera_only`` with a 90° orbit at the checkpoint's
frame count and sampling defaults, and saves the page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from factorportrait.app import Renderer, launch
from factorportrait.app.browser import free_port, open_page, start_browser, type_into, wait_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/images/app.png")
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as outputs:
        renderer = Renderer(args.checkpoint, outputs)
        port = free_port()
        app = launch(renderer, "127.0.0.1", port, block=False)
        browser = start_browser(1400, 1500)
        try:
            find = open_page(browser, f"http://127.0.0.1:{port}/")
            find("#demo-identity").click()
            wait_for(browser, "#reference-view img")
            find("#mode input[value=camera_only]").click()
            type_into(find("#param-degrees input[type=number]"), "90")
            find("#render-button").click()
            start = time.perf_counter()
            wait_for(browser, "#result video", lambda video: video.get_attribute("src"), 600)
            time.sleep(2)  # the video's first frame and the plot settle
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(args.out)
            print(f"wrote {args.out} (render {time.perf_counter() - start:.1f} s): "
                  f"{find('#status').text}")
        finally:
            browser.quit()
            app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
