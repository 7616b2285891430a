#!/usr/bin/env bash
# Installs harmonizer_dagster on a 64-bit Raspberry Pi OS host as a code server.
# Run from a checkout of the project: sudo deploy/pi/install.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
prefix=/opt/harmonizer
apt-get install -y python3-venv python3-dev
id harmonizer >/dev/null 2>&1 || useradd --system --home-dir /var/lib/harmonizer --create-home harmonizer
install -d -o harmonizer -g harmonizer /var/lib/harmonizer/dagster_home /var/lib/harmonizer/staging
[ -x "$prefix/venv/bin/python" ] || python3 -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install --quiet --upgrade pip
"$prefix/venv/bin/python" -m pip install --quiet .
# The production instance: storage in the central PostgreSQL, read from the environment.
install -m 0644 dagster.yaml /var/lib/harmonizer/dagster_home/dagster.yaml
install -d -m 0750 /etc/harmonizer
if [ ! -f /etc/harmonizer/harmonizer.env ]; then
  install -m 0640 -g harmonizer deploy/pi/harmonizer.env.example /etc/harmonizer/harmonizer.env
  echo "Edit /etc/harmonizer/harmonizer.env, then: systemctl restart harmonizer-code-server"
fi
install -m 0644 deploy/pi/harmonizer-code-server.service /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now harmonizer-code-server
