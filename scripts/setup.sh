#!/usr/bin/env bash
# Installs everything Lockstep and its tests need on a fresh Debian machine, then builds.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: real clients for the guests' tests (redis-cli, redis-benchmark, curl),
# redis-server as the baseline a user would otherwise pick (bench/switch.ts), and etcd-server
# (/usr/bin/etcd) for `--arbiter etcd://` and its tests (test/ft/etcd-arbiter.test.ts). The
# package's systemd unit is not needed: the tests start their own etcd on free ports. chromium
# (/usr/bin/chromium) is the headless browser of the dashboard's tests (test/dashboard/), driven
# by npm's playwright-core, which downloads no browser of its own. iproute2 (`ip netns`) for the
# partition test of the etcd arbiter (test/cluster/etcd-partition.test.ts).
debian_packages=(redis-tools redis-server curl etcd-server iproute2 chromium)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
npm run build
