# sbx developer tasks. `make demo` and `make test` are all a fresh Debian or Ubuntu machine
# with Docker needs: they install the system tools (scripts/need-tools: mmdebstrap, pip), the
# package with its dev extras, and build the images first.

PYTHON ?= python3
STAMPS := .sbx/stamps
# Debian's own python3 refuses `pip install` outside a venv (PEP 668); sbx's CI runs as root
# on a throw-away machine, so allow it there. Inside a venv this stays empty.
PIP_FLAGS := $(shell $(PYTHON) -c 'import os, sys, sysconfig; print("--break-system-packages" if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else "")' 2>/dev/null)

.PHONY: tools dev lint images test redteam demo demo-pipeline bench bench-full clean

# mmdebstrap and pip through apt-get (as root or with sudo), or one line saying how (exit 3).
tools:
	@PYTHON='$(PYTHON)' sh scripts/need-tools

# Install sbx in editable mode with the dev tools.
dev: tools
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[dev]'
	@mkdir -p $(STAMPS) && touch $(STAMPS)/dev

# Reinstall only when the dependencies change.
$(STAMPS)/dev: pyproject.toml | tools
	$(MAKE) dev

lint: $(STAMPS)/dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

# Build the runtime (gateway/agent/probe) and step images with mmdebstrap + docker import.
# Always runs: it takes milliseconds when the images for the current code already exist.
images: tools $(STAMPS)/dev
	$(PYTHON) -m sbx.sandbox.images

test: $(STAMPS)/dev images
	$(PYTHON) -m pytest -q

# Only the red-team suite (attacks, faults, bad input, load); `make test` already includes it.
redteam: $(STAMPS)/dev images
	$(PYTHON) -m pytest -q -m redteam tests/redteam

# The point in under a minute: a local "internet", one allowed fetch, one denied attempt,
# sbx verify, the HTML report, and the paths to open.
demo: $(STAMPS)/dev images
	$(PYTHON) examples/demo/demo.py

# The realistic pipeline: starts its own package mirror, runs, removes the mirror.
demo-pipeline: $(STAMPS)/dev images
	$(PYTHON) examples/wheel/mirror.py

# Quick mode (CI): every benchmark once with tiny sizes; fails only if a benchmark breaks.
bench: $(STAMPS)/dev images
	$(PYTHON) bench/run.py --quick

# The figures of docs/performance.md: medians, 1 GiB, 200 requests, 100-step verify.
bench-full: $(STAMPS)/dev images
	$(PYTHON) bench/run.py --json .sbx/bench.json --markdown .sbx/bench.md

# Remove build and tool caches and the stamps (not run evidence under .sbx/, not images).
clean:
	rm -rf $(STAMPS) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
