#!/usr/bin/env bash
# Make sure the browser the browser tests drive is here: Debian's Chromium at /usr/bin/chromium
# (Playwright's own browser downloads are not used). Installs it when missing and we are root
# with apt-get; otherwise prints the exact command to run and exits 1.
#   bash infra/browser.sh          -> exit 0 when /usr/bin/chromium runs (installed if needed)
set -euo pipefail
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
INSTALL="apt-get update && apt-get install -y --no-install-recommends chromium"

works() { [ -x "$CHROMIUM" ] && "$CHROMIUM" --headless --no-sandbox --version >/dev/null 2>&1; }

if works; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[browser] $CHROMIUM is missing: installing Debian's chromium (a minute or two)" >&2
  (
    flock 9  # two test runs at once: one installs, the other waits
    if ! works; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y --no-install-recommends chromium >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends chromium >&2; }
    fi
  ) 9>/tmp/csv-opener-chromium.lock
  if works; then
    echo "[browser] $("$CHROMIUM" --version 2>/dev/null) installed" >&2
    exit 0
  fi
  echo "[browser] installing chromium failed; run as root: $INSTALL" >&2
  exit 1
fi
echo "[browser] Chromium is missing at $CHROMIUM; install it as root: $INSTALL" >&2
exit 1
