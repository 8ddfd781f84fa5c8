# Two commands for a fresh clone: `make run` (the pipeline with demo data) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test soak lint fmt stack-up stack-down clean browser-deps vendor

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The whole pipeline with a week of demo data; prints the page URL and API key. Ctrl-C stops it.
run: install
	$(BIN)/llm-usage run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The whole suite, then the tests marked `sharded` again on a 2-shard ClickHouse cluster.
# Two pytest processes (pytest-xdist), each with its own broker and ClickHouse: a test
# mostly waits on them, so two at a time nearly halve the time on 2 cores.
TEST_PROCS ?= 2
test: install lint browser-deps
	$(BIN)/pytest -n $(TEST_PROCS) --dist loadfile
	LLM_USAGE_TEST_SHARDS=2 $(BIN)/pytest -n $(TEST_PROCS) --dist loadfile -m sharded

# The worker crash, outage, two-worker and live-alert tests N times each, then a table of
# runs and failures per test (tests/soak.py): `make soak`, `make soak N=3`; other tests with
# SOAK_TESTS="tests/x.py tests/y.py::test_z". A test that fails one run in ten fails CI too.
N ?= 10
soak: install
	$(BIN)/python -m tests.soak --count $(N) --procs $(TEST_PROCS)

# The browser tests drive Debian's Chromium (no browser download: `playwright install` is not used).
browser-deps:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium; }

# Refresh the committed Chart.js build (query_api/static/vendor/) from package-lock.json.
vendor:
	npm ci --no-audit --no-fund
	npm run vendor

stack-up: install
	$(BIN)/llm-usage stack up

stack-down: install
	$(BIN)/llm-usage stack down

clean:
	-$(BIN)/llm-usage stack down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
