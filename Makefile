# One-command start and test. See README.md.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export ORT_DISABLE_TELEMETRY := 1
export NUMBA_CACHE_DIR := $(CURDIR)/var/numba
export PYTHONPATH := $(CURDIR)
# honcho gives each Procfile entry PORT = base + 100 * index; web is first, so it gets PORT.
PORT ?= 8050
export PORT

.PHONY: run test bench setup clean assets model

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# xstatic-bootstrap is an sdist whose build needs pkg_resources (setuptools < 81): build it
	# first, without isolation; then the pins, which may move setuptools on (hdrhistogram wants 83+)
	$(BIN)/pip install --quiet "setuptools<81" wheel
	$(BIN)/pip install --quiet --no-build-isolation $$(grep -i '^xstatic-bootstrap==' requirements.txt)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

setup: $(STAMP) assets model

# The signal model (ONNX) is trained here on simulated ticks, never downloaded; a few seconds.
model: $(STAMP)
	$(BIN)/python -m scripts.train_model --if-missing

# Bootstrap 5.3 CSS comes from the installed xstatic-bootstrap package, never from a CDN.
assets: $(STAMP)
	$(BIN)/python -m scripts.vendor_assets

run: setup
	@mkdir -p var
	@$(BIN)/python -c "from core.settings import get_settings as g; s=g(); print(f'Console: http://{s.host}:{s.port}  (Redis: {s.redis_url})', flush=True)"
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start -f Procfile

test: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

bench: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m bench.run

clean:
	rm -rf var .pytest_cache
