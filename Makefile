# One command to set up and run each thing; every target bootstraps .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
SOUNDTAG := $(VENV)/bin/soundtag
# Local copy of the real datasets (ESC-50, ESC-10, FSDKaggle2018 metadata); see README.
export SOUNDTAG_DATA ?= $(abspath ../shared/data)
DEMO ?= demo

.PHONY: venv test test-fast lint browser browser-for-test demo demo-run bench docs clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: this exact build is served from the machine's local wheel cache,
	# and the package's own range (torch>=2.4,<3) is then already satisfied.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# The whole suite, doctests of src/ included; installs chromium first when it is missing (see
# browser-for-test), so that the review page's real-browser test runs rather than skips.
test: venv browser-for-test
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything but the tests marked slow (training runs, many clips): under a minute on 2 cores.
test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# chromium present: nothing to do. Missing: installed through `make browser` when this user may
# install packages (root, or sudo without a password or with a terminal to ask it on), else
# stop with the command to run.
browser-for-test:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] || { command -v sudo >/dev/null && { sudo -n true 2>/dev/null || [ -t 0 ]; }; }; then \
	    echo "chromium is missing (the review page's browser test needs it): installing it with make browser"; \
	    $(MAKE) --no-print-directory browser; \
	  else \
	    echo "chromium is missing and this user cannot install packages; run as root (or with sudo):" >&2; \
	    echo "  sudo make browser    # or: apt-get install -y chromium chromium-driver" >&2; \
	    exit 1; \
	  fi; }

# Debian's chromium for the review page's browser test (Playwright drives it; no browser download).
browser:
	command -v chromium >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y chromium chromium-driver; }

demo: venv
	$(SOUNDTAG) data check esc50
	$(SOUNDTAG) features --data esc50 --recipe esc50-lh --recipe esc50-x --cache $(DEMO)/features
	$(SOUNDTAG) features --data esc10 --recipe fsd2018-lh --recipe fsd2018-x --cache $(DEMO)/features
	$(SOUNDTAG) show "$(SOUNDTAG_DATA)/esc10/audio/001 - Dog bark/1-100032-A.ogg" --recipe fsd2018-lh --out $(DEMO)/dog-bark.png
	$(MAKE) demo-run NAME=esc10-lh RECIPE=esc50-cpu-lh
	$(MAKE) demo-run NAME=esc10-x RECIPE=esc50-cpu-x
	$(SOUNDTAG) evaluate $(DEMO)/esc10-lh
	# Predictions for ESC-10 itself with every fold model (the fold models saw 4/5 of these clips:
	# this shows the file formats; the out-of-fold numbers of `ensemble` are the honest scores).
	$(SOUNDTAG) predict $(DEMO)/esc10-lh --data esc10 --no-progress
	$(SOUNDTAG) predict $(DEMO)/esc10-x --data esc10 --no-progress
	$(SOUNDTAG) ensemble $(DEMO)/esc10-lh $(DEMO)/esc10-x --out $(DEMO)/esc10-lh+x
	$(SOUNDTAG) submit $(DEMO)/esc10-lh+x/predictions/esc10.csv --format kaggle --out $(DEMO)/esc10-submission.csv
	head -4 $(DEMO)/esc10-submission.csv
	$(SOUNDTAG) tag $(DEMO)/esc10-lh+x "$(SOUNDTAG_DATA)/esc10/audio/001 - Dog bark" --top 2
	$(SOUNDTAG) export $(DEMO)/esc10-lh --format onnx --out $(DEMO)/esc10-lh.onnx
	$(SOUNDTAG) tag $(DEMO)/esc10-lh.onnx "$(SOUNDTAG_DATA)/esc10/audio/009 - Rooster/1-26806-A.ogg" --timeline

# One training run of the demo, resumed when an earlier demo was interrupted.
demo-run: venv
	test -f $(DEMO)/$(NAME)/metrics.json || \
	  if [ -f $(DEMO)/$(NAME)/run.json ]; then $(SOUNDTAG) train --resume $(DEMO)/$(NAME); \
	  else $(SOUNDTAG) train --data esc10 --recipe $(RECIPE) --out $(DEMO)/$(NAME) --cache $(DEMO)/features; fi

bench: venv
	$(PY) benchmarks/features.py

# ruff's lint and format check, and the package's layers (import-linter's contract in pyproject.toml).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# MkDocs and mkdocstrings (the docs extra), installed into .venv once beside the package.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[test,docs]"
	touch $@

# The documentation site (mkdocs.yml, docs/) into site/, warnings as errors: a broken link or
# anchor, a page left out of the nav, or an API reference naming what src/ no longer has fails it.
docs: $(VENV)/.docs-installed
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(DEMO) .cache .pytest_cache site
