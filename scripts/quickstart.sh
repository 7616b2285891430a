#!/usr/bin/env bash
# Installs the project in .venv and runs the main job over the shipped samples on the
# embedded default: SQLite-backed Dagster instance, DuckDB warehouse, no server needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# The test suite's UI test drives Debian's Chromium (Playwright never downloads a browser).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "note: the UI test needs Chromium: sudo apt-get install chromium"
  fi
fi
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp deploy/local/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
.venv/bin/dagster job execute -m harmonizer_dagster -j ingest_landing
.venv/bin/harmonizer summary
echo
echo "Dagster runs and materializations: $DAGSTER_HOME (see them with: DAGSTER_HOME=$DAGSTER_HOME .venv/bin/dagster dev)"
