# Image Factory: `make demo` builds an image on the local cloud, `make test` runs the tests.
# Both install what they need first (scripts/setup.sh).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint local-cloud-up local-cloud-down deployment-up deployment-down bench airflow-ui \
	test-browser

setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/python scripts/demo.py

lint: setup
	$(BIN)/ruff check .

# Two worker processes (pytest-xdist), a test file each at a time (the longest first: tests/conftest.py), each
# with a local cloud of its own in one of the host's two slots: a build mostly waits (boots, SSH, the emulated
# AWS), so two share the two cores well. Then the tests that need the whole host (marked whole_host), alone.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not whole_host"
	$(BIN)/pytest -m whole_host

local-cloud-up: setup
	$(BIN)/python -m localcloud up

local-cloud-down:
	$(BIN)/python -m localcloud down

# The Celery deployment (localcloud/deployment.py) on the local cloud (started first unless it runs): PostgreSQL,
# Redis and Airflow's four components on this host, two workers each a host of its own on the cloud's bridge.
deployment-up: setup
	$(BIN)/python -m localcloud status >/dev/null || $(BIN)/python -m localcloud up
	$(BIN)/python -m localcloud deployment-up

deployment-down:
	$(BIN)/python -m localcloud deployment-down

# The Airflow UI on the local cloud, in the foreground (Ctrl-C stops it): scheduler, dag-processor, triggerer
# and api-server on http://127.0.0.1:$(AIRFLOW_UI_PORT) with AIRFLOW_HOME .airflow-ui/; prints the login.
AIRFLOW_UI_PORT ?= 8080
airflow-ui: setup
	$(BIN)/python scripts/airflow_ui.py --port $(AIRFLOW_UI_PORT)

# Only the browser test (headless Chromium through the Airflow UI); screenshots in test-artifacts/browser/.
test-browser: setup
	$(BIN)/pytest -s tests/test_browser.py

# Benchmarks (bench/README.md): figures and ratios against peers measured in the same run, not tests.
# -c requirements.txt: the benchmark packages never move a pinned package. The concurrency benchmark's database
# is Debian's postgresql package, installed (apt-get) only when missing.
bench: setup
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.txt -r requirements-bench.txt
	PYTHONPATH=plugins:. $(BIN)/python -m bench.postgres install
	PYTHONPATH=plugins:. $(BIN)/python -m bench.run all

# The docs' screenshots (docs/images/*.png): the browser test, which also saves them there under stable names
# (grid.png, configure-log.png, approval.png, images-page.png; 1280x800, the Images page 1600x1000). Commit them.
.PHONY: screenshots
screenshots: setup
	IMAGE_FACTORY_DOCS_SCREENSHOTS=1 $(BIN)/pytest -s tests/test_browser.py
