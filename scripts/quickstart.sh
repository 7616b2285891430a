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

# The embedded instance, .dagster_home, becomes the default of every Dagster command started here
# (.env); an exported DAGSTER_HOME still wins for them. The quickstart itself always runs on the
# embedded instance, whatever is exported.
scripts/local_instance.sh
home="$PWD/.dagster_home"

log=.harmonizer/quickstart.log
echo "Running the main job, ingest_landing, over the shipped samples (log: $log) ..."
if ! DAGSTER_HOME="$home" .venv/bin/dagster job execute -m harmonizer_dagster -j ingest_landing >"$log" 2>&1; then
  tail -n 40 "$log"
  echo "ingest_landing failed; its whole log is $log" >&2
  exit 1
fi
.venv/bin/harmonizer summary
if [ -n "${DAGSTER_HOME:-}" ] && [ "$DAGSTER_HOME" != "$home" ]; then
  echo
  echo "DAGSTER_HOME is exported ($DAGSTER_HOME): the commands below use that instance;"
  echo "unset it to use the embedded one the quickstart ran on ($home)."
fi
cat <<NEXT

Next, from this folder:
  .venv/bin/dagster dev                 the UI, on http://127.0.0.1:3000 (Ctrl-C stops it)
  .venv/bin/harmonizer dq list          open data-quality issues, with their ids
  scripts/test.sh                       the tests
NEXT
