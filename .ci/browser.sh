#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the review app's browser tests (tests/review/test_web_browser.py).
#
#     bash .ci/browser.sh && GRADGUARD_REQUIRE_BROWSER=1 pytest -m browser
#
# Idempotent: does nothing when /usr/bin/chromium and /usr/bin/chromedriver are both there; otherwise
# installs Debian's `chromium` and `chromium-driver` (apt-get update first only when the install fails on a
# stale or empty package index). Needs root (or sudo) for the install.
set -euo pipefail

log() { echo "browser.sh: $*" >&2; }

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    log "chromium and chromedriver are installed"
    exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        log "installing chromium needs root; run as root or install sudo"
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
install() { "${sudo[@]}" apt-get install -y --no-install-recommends chromium chromium-driver; }

log "installing chromium and chromium-driver"
if ! install; then
    log "install failed; updating the package index and trying again"
    "${sudo[@]}" apt-get update
    install
fi

for path in /usr/bin/chromium /usr/bin/chromedriver; do
    if [[ ! -x "$path" ]]; then
        log "$path is still missing after the install"
        exit 1
    fi
done
log "$(/usr/bin/chromium --version 2>/dev/null || echo chromium) and $(/usr/bin/chromedriver --version 2>/dev/null | head -n 1)"
