#!/usr/bin/env bash
# Installs the project in .venv and runs the main job, `ingest_landing`, over the shipped samples
# on the embedded default: SQLite-backed Dagster instance, DuckDB warehouse, no server needed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .harmonizer
echo "Installing harmonizer_dagster into .venv (log: .harmonizer/install.log) ..."
if ! scripts/install.sh >.harmonizer/install.log 2>&1; then
  tail -n 40 .harmonizer/install.log
  echo "the install failed; its whole log is .harmonizer/install.log" >&2
  exit 1
fi

# Dagster's commands read .env from the folder they start in. With DAGSTER_HOME set there,
# every command the README shows uses this embedded instance, never the production
# dagster.yaml at the top level (which needs PostgreSQL).
home="$([ -f .env ] && sed -n 's/^DAGSTER_HOME=//p' .env | tail -n 1 || true)"
if [ -z "$home" ]; then
  home="$PWD/.dagster_home"
  echo "DAGSTER_HOME=$home" >> .env
fi
mkdir -p "$home"
[ -f "$home/dagster.yaml" ] || cp deploy/local/dagster.yaml "$home/dagster.yaml"

log=.harmonizer/quickstart.log
echo "Running the main job, ingest_landing, over the shipped samples (log: $log) ..."
if ! DAGSTER_HOME="$home" .venv/bin/dagster job execute -m harmonizer_dagster -j ingest_landing >"$log" 2>&1; then
  tail -n 40 "$log"
  echo "ingest_landing failed; its whole log is $log" >&2
  exit 1
fi
.venv/bin/harmonizer summary
cat <<NEXT

Next, from this folder:
  .venv/bin/dagster dev                 the UI, on http://127.0.0.1:3000 (Dagster instance: $home)
  .venv/bin/harmonizer dq list          open data-quality issues, with their ids
  scripts/test.sh                       the tests
NEXT
