# LungScan: `make run` serves the page and the API on http://127.0.0.1:5001; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov
PY := $(VENV)/bin/python
PORT ?= 5001

.PHONY: help install install-dev install-sam install-checkov install-browser install-pacs run test test-unit test-integration fuzz lint typecheck format events bench train evaluate publish deploy clean

help:
	@echo "make run    - install and serve page + API on http://127.0.0.1:$(PORT) (local S3, bundled model)"
	@echo "make test   - install and run lint + type check + every test (unit, integration, template, local stack, browser)"
	@echo "make bench  - print latency / cold start / memory figures"
	@echo "make fuzz   - long fuzz run with fresh random inputs (FUZZ_EXAMPLES per property, default 5000)"
	@echo "make train  - retrain the shipped models (models/malignancy-screen, iq-oth-3class, chest-ct-4class) from ../shared/data"
	@echo "make evaluate BUNDLE=models/... - re-measure a bundle as served, rewrite its report/ and model card"
	@echo "make publish BUNDLE=models/... MODEL_BUCKET=... - validate, upload, move latest.json"
	@echo "make deploy - sam build + deploy + site sync + model publish (needs an AWS account and Docker)"

$(VENV)/.installed-app: requirements.txt functions/classifier/requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-app requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The SAM CLI pins conflict with the app's boto3/pydantic: it gets its own virtualenv.
$(SAM_VENV)/.installed: infrastructure/sam-requirements.txt
	test -x $(SAM_VENV)/bin/python || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -r infrastructure/sam-requirements.txt
	touch $@

# checkov (template security scan in tests/unit/test_template.py) pins its own dependencies: its own virtualenv.
$(CHECKOV_VENV)/.installed: infrastructure/checkov-requirements.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r infrastructure/checkov-requirements.txt
	touch $@

install: $(VENV)/.installed-app
install-dev: $(VENV)/.installed-dev
install-sam: $(SAM_VENV)/.installed
install-checkov: $(CHECKOV_VENV)/.installed

# Browser tests: Debian's Chromium (never a downloaded browser) and axe-core from npm.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-browser: node_modules/.installed
	@test -x /usr/bin/chromium || { \
		echo "Installing Debian's chromium for the browser tests"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	}

# The PACS round trip's integration test (tests/integration/test_pacs.py): a real Orthanc with its DICOMweb
# plugin, and DCMTK's storescu and dsrdump. Debian packages; make run never needs them.
install-pacs:
	@test -x /usr/sbin/Orthanc && dpkg -s orthanc-dicomweb >/dev/null 2>&1 && command -v storescu >/dev/null || { \
		echo "Installing Debian's orthanc, orthanc-dicomweb and dcmtk for the PACS tests"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			orthanc orthanc-dicomweb dcmtk; \
	}

node_modules/.installed: package.json $(wildcard package-lock.json)
	if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
	touch $@

# The handler's flat modules (import app) from its task root, as the Lambda image has them.
run: install
	PYTHONPATH=functions/classifier $(PY) -m infrastructure.local_stack --port $(PORT)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy over lungscan/, functions/classifier/, training/ and lungscan_client/ ([tool.mypy] in pyproject.toml).
typecheck: install-dev
	$(VENV)/bin/mypy

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install-dev install-sam install-checkov install-browser install-pacs lint typecheck
	$(PY) -m pytest

test-unit: install-dev
	$(PY) -m pytest tests/unit

test-integration: install-dev install-sam install-pacs
	$(PY) -m pytest tests/integration

# Fresh random inputs each run (make test replays a fixed seed). A property that finds a 5xx leaves
# its shrunk input in build/fuzz-findings/: move it into tests/fixtures/fuzz_regressions/ with the fix.
FUZZ_EXAMPLES ?= 5000
fuzz: install-dev
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_RANDOM=1 $(PY) -m pytest tests/unit/test_fuzz.py -p no:cacheprovider

events: install-sam
	$(PY) -m events.generate

bench: install-dev
	$(PY) -m benchmarks.bench_predict

# The shipped bundles, reproduced (python -m training train --help; each preset holds its dataset credit).
# Each preset holds its recipe (model cards: Recipe selection), its data folder and models/<name>. About 6 minutes
# on 2 CPU cores: the 3-class CNN ensemble ~4.5 min (reproduced bit for bit), the 4-class HOG model ~15 s, the gate
# ~50 s, the twins ~30 s.
train: install
	$(PY) -m training train --preset both-datasets
	$(PY) -m training train --preset iq-oth-nccd
	$(PY) -m training train --preset chest-ct-scan
	$(PY) -m training gate models/malignancy-screen models/iq-oth-3class models/chest-ct-4class \
		--ct-bundles models/iq-oth-3class models/chest-ct-4class --data-dir ../shared/data
	$(PY) -m training twin models/malignancy-screen
	$(PY) -m training twin models/iq-oth-3class
	$(PY) -m training twin models/chest-ct-4class
	$(PY) -m training unfamiliar models/malignancy-screen models/iq-oth-3class models/chest-ct-4class \
		--data-dir ../shared/data

BUNDLE ?= models/iq-oth-3class
evaluate: install
	$(PY) -m training evaluate $(BUNDLE)

# MODEL_BUCKET from the environment or the command line; AWS_ENDPOINT_URL_S3 for a local S3.
publish: install
	$(PY) -m training publish $(BUNDLE) $(if $(MODEL_BUCKET),--bucket $(MODEL_BUCKET))

deploy: install install-sam
	PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH" bash infrastructure/deploy.sh

clean:
	rm -rf build .pytest_cache .ruff_cache .aws-sam
