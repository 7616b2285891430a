#!/usr/bin/env bash
# The test suite: installs the project when .venv is missing, Debian's Chromium for the UI
# tests when it is missing (Playwright drives it; no browser is ever downloaded), and Debian's
# Prometheus for the monitoring tests (they start it, scraping the project's /metrics). They start
# what else they need, PostgreSQL included. Arguments go to pytest. Test files run two at a
# time (most of the suite waits on servers, daemons and browsers); -n 0 runs them one by one.
set -euo pipefail
cd "$(dirname "$0")/.."
# A venv from before a new test tool was added is brought up to date too.
.venv/bin/python -c "import pytest, xdist, playwright" 2>/dev/null || scripts/install.sh
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's Chromium for the UI tests ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "The UI tests need Chromium: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's Prometheus for the monitoring tests ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "The monitoring tests need Prometheus: sudo apt-get install prometheus" >&2
    exit 1
  fi
fi
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
