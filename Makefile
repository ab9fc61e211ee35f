# callagent: `make run` starts the server on the embedded defaults, `make test` passes every test.
# Both set everything up first (a virtualenv in .venv, and redis-server for the tests).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test soak bench lint redis-server nginx clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[fast,test,dev]'
	touch $(STAMP)

run: install
	$(BIN)/python -m callagent serve

# The Redis tests start their own redis-server on a free port; install it when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: install it (apt-get install redis-server) to run the Redis tests" >&2; exit 1; \
	  fi; }

# The nginx test runs Debian's nginx in front of three instances; install it when missing.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; \
	  else \
	    echo "nginx is missing: install it (apt-get install nginx) to run the nginx test" >&2; exit 1; \
	  fi; }

test: install redis-server nginx
	$(BIN)/python -m pytest -q

# A few minutes of barge-in races, disconnects, faults and bad input; then nothing may be left
# behind. Not part of `make test`. CALLAGENT_SOAK_SECONDS sets the length (120 by default).
soak: install
	CALLAGENT_SOAK=1 $(BIN)/python -m pytest -q tests/test_soak.py

bench: install
	$(BIN)/python scripts/bench.py

lint: install
	$(BIN)/ruff check callagent scripts tests
	$(BIN)/mypy callagent

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
