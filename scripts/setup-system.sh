#!/usr/bin/env bash
# Debian packages the project needs: unixODBC with the SQLite, PostgreSQL and MariaDB drivers,
# xmlsec1 and a Python 3.11 able to make virtual environments; SoftHSM2 (a PKCS#11 token for tests);
# Redis (the Celery broker the scale-out test starts on a port of its own).
set -euo pipefail
packages=(unixodbc libsqliteodbc odbc-postgresql odbc-mariadb xmlsec1 ca-certificates softhsm2 redis-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
"$(dirname "$0")/install-debian-packages.sh" "${packages[@]}"
odbcinst -q -d -n SQLite3 >/dev/null || { echo "the SQLite3 ODBC driver is not registered" >&2; exit 1; }
