#!/usr/bin/env bash
# The headless browser of the web app's tests (tests/test_app_browser.py): Debian's chromium
# and chromium-driver. Does nothing when both are installed; otherwise installs them with
# apt-get (as root, or through sudo). Fails with one line when it cannot.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null; then
    SUDO="sudo"
else
    echo "setup_browser: chromium and chromium-driver are missing and this user cannot install" \
         "them (not root, no sudo): install Debian's chromium and chromium-driver" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "setup_browser: no apt-get here: install chromium and its chromedriver (the same" \
         "version), then set FACTORPORTRAIT_CHROMIUM and FACTORPORTRAIT_CHROMEDRIVER" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q || true  # a stale index still installs; the install below decides
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
