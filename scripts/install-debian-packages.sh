#!/usr/bin/env bash
# Install those of the given Debian packages that are missing, so that set-up stays quick once
# everything is there. Options before the packages go to apt-get (e.g. --no-install-recommends).
set -euo pipefail
options=()
while [[ $# -gt 0 && $1 == -* ]]; do options+=("$1"); shift; done
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${options[@]}" "${missing[@]}" >/dev/null
fi
