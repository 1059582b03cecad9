#!/usr/bin/env bash
# The tests reach PostgreSQL through psqlODBC. Make sure a server answers on 127.0.0.1:5432 and
# that the test role and database exist; install and start Debian's server when there is none.
set -euo pipefail
host=127.0.0.1 port=${LIENTHONG_PG_PORT:-5432}
role=lienthong password=lienthong
# One database per pytest-xdist worker (make test runs three), and one for a plain pytest run.
# The scale-out test makes (and drops) databases of its own: the role may create databases.
dbs=(lienthong_test lienthong_test_gw0 lienthong_test_gw1 lienthong_test_gw2)
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"

if ! command -v pg_ctlcluster >/dev/null; then
  echo "installing PostgreSQL from Debian's packages"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
fi
if ! pg_isready -q -h "$host" -p "$port"; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h "$host" -p "$port" && break; sleep 1; done
fi
pg_isready -q -h "$host" -p "$port" || { echo "PostgreSQL does not answer on $host:$port" >&2; exit 1; }

as_postgres() { $sudo -u postgres psql -v ON_ERROR_STOP=1 -qAt -p "$port" "$@"; }
if [ "$(id -u)" = 0 ]; then as_postgres() { su postgres -c "psql -v ON_ERROR_STOP=1 -qAt -p $port $(printf '%q ' "$@")"; }; fi
[ "$(as_postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" = 1 ] ||
  as_postgres -c "CREATE ROLE $role LOGIN PASSWORD '$password'"
[ "$(as_postgres -c "SELECT rolcreatedb FROM pg_roles WHERE rolname = '$role'")" = t ] ||
  as_postgres -c "ALTER ROLE $role CREATEDB"
for db in "${dbs[@]}"; do
  [ "$(as_postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" = 1 ] ||
    as_postgres -c "CREATE DATABASE $db OWNER $role"
done
