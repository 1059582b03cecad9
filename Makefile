# Two commands do everything on a fresh Debian machine: `make demo` and `make test`.
# Both install what is missing (Debian packages, then a virtual environment from the lock file)
# and are quick when everything is there already.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Three workers (pytest-xdist) on two cores: the end-to-end runs spend much of their time waiting
# on Airflow's child processes and the sandbox's servers (two workers kept 1.3 cores busy).
# Tests are handed out one at a time, end-to-end runs first (tests/conftest.py), so no worker is
# left with a queue of two-minute runs while the others idle. scripts/ensure-postgres.sh and
# ensure-mariadb.sh make a database for each worker.
PYTEST := $(PY) -m pytest -n 3 --maxschedchunk 1

.PHONY: demo test test-quick bench setup system lock clean-data

demo: setup
	$(VENV)/bin/lienthong demo

test: setup
	scripts/ensure-postgres.sh
	scripts/ensure-mariadb.sh
	@scripts/setup-browser.sh
	$(PYTEST)

# The quick subset: everything but the end-to-end runs through Airflow.
test-quick: setup
	scripts/ensure-postgres.sh
	scripts/ensure-mariadb.sh
	@scripts/setup-browser.sh
	$(PYTEST) -m "not slow"

# The route end to end on N dossiers (make bench N=1000000), against the naive way and the floor.
N ?= 100000
bench: setup
	$(VENV)/bin/lienthong bench --records $(N)

setup: system $(STAMP)

system:
	@scripts/setup-system.sh

$(STAMP): requirements.lock pyproject.toml
	scripts/setup-venv.sh $(VENV)
	@touch $(STAMP)

# Re-resolve the pinned set after changing pyproject.toml.
lock: setup
	SSL_CERT_FILE=$${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} $(VENV)/bin/uv pip compile pyproject.toml --extra test --python-version 3.11 -o requirements.lock

clean-data:
	rm -rf .lienthong
