# The two commands of the README: `make run` and `make test`. Everything they need is
# installed here, into .venv at the repository root, from the hashed lock files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format install sweep clean lock browser nginx serve-cluster

$(BIN)/.installed: requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

install: $(BIN)/.installed

# `make run` is a local dev server: debug on (unless set), so no secret key is required.
# The demo users' passwords are published: they are made (and reset) only in debug.
run: export DJANGO_DEBUG := $(or $(DJANGO_DEBUG),1)
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo --if-debug
	@echo "Open http://$(HOST):$(PORT)/ and sign in with one of the accounts above."
	$(BIN)/python manage.py serve -b $(HOST) -p $(PORT)

# The suite runs on TEST_WORKERS processes (pytest-xdist; 0 runs it in this one). Its
# tests wait on processes and sockets more than they compute, and each deployment keeps
# to its own database, Redis prefix and ports, so workers cannot see each other's data.
TEST_WORKERS ?= 2

test: install browser nginx
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# nginx (Debian's) for `make serve-cluster` and the cluster tests.
nginx:
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
		echo "Installing Debian's nginx..."; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } \
		|| echo "Could not install nginx: cluster tests will skip (fail with REQUIRE_SERVICES=1)."; }

# nginx on 127.0.0.1:$(CLUSTER_PORT) in front of $(PROCESSES) daphne processes, and the
# moderation worker, on the local PostgreSQL and Redis (DATABASE_URL and REDIS_URL
# override them). Ctrl-C drains.
PROCESSES ?= 2
CLUSTER_PORT ?= 8080
serve-cluster: install nginx
	$(BIN)/python deploy/cluster.py --processes $(PROCESSES) --port $(CLUSTER_PORT)

# Browser tests drive Debian's Chromium (never a downloaded browser build). Installed
# here when possible; without it those tests skip locally and fail under CI.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Installing Debian's chromium for the browser tests..."; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "Could not install chromium: browser tests will skip (fail with REQUIRE_SERVICES=1)."; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

sweep: install
	$(BIN)/python manage.py sweep_streams

# Re-pin after editing pyproject.toml (needs uv in the venv: .venv/bin/pip install uv).
lock:
	$(BIN)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --group dev --generate-hashes --python-version 3.11 -o requirements-dev.lock

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache

# Benchmark (see bench/REPORT.md): real daphne, simulator and load-generator
# processes against the local Redis and PostgreSQL. Writes bench/results/latest.json and
# a dated copy; `bench` also redraws the plots in bench/. Not part of `make test`.
.PHONY: bench bench-quick
bench: install
	$(BIN)/python -m bench.run

bench-quick: install
	$(BIN)/python -m bench.run --quick
