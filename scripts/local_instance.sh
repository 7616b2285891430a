#!/usr/bin/env bash
# Sets up the embedded instance, .dagster_home (deploy/local/dagster.yaml), as the default of every
# Dagster command started in this folder: Dagster's commands read .env from the folder they start
# in, and the line written there falls back to .dagster_home only when DAGSTER_HOME is not
# exported, so an exported (production) DAGSTER_HOME always wins.
set -euo pipefail
cd "$(dirname "$0")/.."
embedded="$PWD/.dagster_home"
line='DAGSTER_HOME="${DAGSTER_HOME:-'"$embedded"'}"'
touch .env
# A plain DAGSTER_HOME=<this folder>/.dagster_home, as earlier quickstarts wrote it, would win over
# an exported one: it is replaced. Any other DAGSTER_HOME line in .env is the user's own.
grep -vxF "DAGSTER_HOME=$embedded" .env >.env.new || true
mv .env.new .env
grep -q '^DAGSTER_HOME=' .env || echo "$line" >>.env
mkdir -p "$embedded"
[ -f "$embedded/dagster.yaml" ] || cp deploy/local/dagster.yaml "$embedded/dagster.yaml"
