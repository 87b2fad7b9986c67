#!/usr/bin/env bash
# Makes sure the dashboard's browser test can run: Debian's Chromium at /usr/bin/chromium and
# playwright-core (pinned in browser-tests/package-lock.json) in browser-tests/node_modules.
# Playwright's own browser download is never used: it needs a network this CI does not have.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Chromium with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
  echo "installing Node.js with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -d browser-tests/node_modules/playwright-core ]; then
  echo "installing playwright-core with npm ci"
  npm ci --prefix browser-tests --no-audit --no-fund >/dev/null
fi
echo "browser test ready: $(/usr/bin/chromium --version 2>/dev/null | head -n 1), node $(node --version)"
