#!/usr/bin/env bash
# The tests reach MariaDB through MariaDB Connector/ODBC. Make sure a server answers on Debian's
# socket and that the test user and databases exist; install and start Debian's server when there
# is none.
set -euo pipefail
socket=/run/mysqld/mysqld.sock
user=lienthong password=lienthong
# One database per pytest-xdist worker (make test runs three), and one for a plain pytest run.
dbs=(lienthong_test lienthong_test_gw0 lienthong_test_gw1 lienthong_test_gw2)
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

"$(dirname "$0")/install-debian-packages.sh" mariadb-server
answers() { $sudo mariadb-admin --socket="$socket" ping >/dev/null 2>&1; }
if ! answers; then
  $sudo service mariadb start >/dev/null || true
  for _ in $(seq 1 30); do answers && break; sleep 1; done
fi
answers || { echo "MariaDB does not answer on $socket" >&2; exit 1; }

as_root() { $sudo mariadb --socket="$socket" -e "$1"; }
as_root "CREATE USER IF NOT EXISTS '$user'@'localhost' IDENTIFIED BY '$password'"
for db in "${dbs[@]}"; do
  as_root "CREATE DATABASE IF NOT EXISTS $db; GRANT ALL ON $db.* TO '$user'@'localhost'"
done
