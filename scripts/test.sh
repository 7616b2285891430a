#!/usr/bin/env bash
# The test suite: installs the project when .venv is missing, Debian's Chromium for the UI
# tests when it is missing (Playwright drives it; no browser is ever downloaded), and Debian's
# Prometheus and Alertmanager for the monitoring and alerting tests (they start them, scraping
# the project's /metrics and delivering alerts to a local mail server and webhook). They start
# what else they need, PostgreSQL included. Arguments go to pytest. Test files run two at a
# time (most of the suite waits on servers, daemons and browsers); -n 0 runs them one by one.
set -euo pipefail
cd "$(dirname "$0")/.."
# A venv from before a new test tool was added is brought up to date too.
.venv/bin/python -c "import pytest, xdist, playwright, prometheus_client, python_calamine, openpyxl, palmerpenguins, kubernetes_validate, dagster_k8s, aiosmtpd, confluent_kafka, fastapi" \
  2>/dev/null || scripts/install.sh
# Installs Debian package $1 when one of the commands named after it and $2 (the tests that
# need them) is missing.
need() {
  local package="$1" purpose="$2"
  shift 2
  for command in "$@"; do
    command -v "$command" >/dev/null 2>&1 && continue
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "Installing Debian's $package for the $purpose tests ..."
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
      return
    fi
    echo "The $purpose tests need $package: sudo apt-get install $package" >&2
    exit 1
  done
}
need chromium UI chromium
need prometheus monitoring prometheus promtool
need prometheus-alertmanager alerting prometheus-alertmanager amtool
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
