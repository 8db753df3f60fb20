#!/usr/bin/env bash
# One install script for CI, the Dockerfile and a fresh machine.
#   scripts/install.sh          runtime: espeak-ng + the pinned Python stack + ua3dtalk
#   scripts/install.sh --test   also what the tests need (pytest, gradio_client, Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[ "${1:-}" = "--test" ] && with_test=1

apt_pkgs="espeak-ng libespeak-ng1"
[ $with_test = 1 ] && apt_pkgs="$apt_pkgs chromium fonts-dejavu-core"
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
fi

python3 -m pip install -q --upgrade pip >/dev/null
req=requirements.txt; [ $with_test = 1 ] && req=requirements-test.txt
python3 -m pip install -q -r "$req"
python3 -m pip install -q --no-deps -e .
