#!/usr/bin/env bash
# Debian packages the project needs: unixODBC with the SQLite and PostgreSQL drivers, xmlsec1 and
# a Python 3.11 able to make virtual environments. Installs only what is missing.
set -euo pipefail
packages=(unixodbc libsqliteodbc odbc-postgresql xmlsec1 ca-certificates)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
odbcinst -q -d -n SQLite3 >/dev/null || { echo "the SQLite3 ODBC driver is not registered" >&2; exit 1; }
