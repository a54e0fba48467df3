# One command to set up and run each thing; every target bootstraps .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
SOUNDTAG := $(VENV)/bin/soundtag
# Local copy of the real datasets (ESC-50, ESC-10, FSDKaggle2018 metadata); see README.
export SOUNDTAG_DATA ?= $(abspath ../shared/data)
DEMO ?= demo

.PHONY: venv test demo bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: this exact build is served from the machine's local wheel cache,
	# and the package's own range (torch>=2.4,<3) is then already satisfied.
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest

demo: venv
	$(SOUNDTAG) data check esc50
	$(SOUNDTAG) features --data esc50 --recipe esc50-lh --recipe esc50-x --cache $(DEMO)/features
	$(SOUNDTAG) features --data esc10 --recipe fsd2018-lh --recipe fsd2018-x --cache $(DEMO)/features
	$(SOUNDTAG) show "$(SOUNDTAG_DATA)/esc10/audio/001 - Dog bark/1-100032-A.ogg" --recipe fsd2018-lh --out $(DEMO)/dog-bark.png
	test -f $(DEMO)/esc10-run/metrics.json || \
	  if [ -f $(DEMO)/esc10-run/run.json ]; then $(SOUNDTAG) train --resume $(DEMO)/esc10-run; \
	  else $(SOUNDTAG) train --data esc10 --recipe esc50-cpu-lh --out $(DEMO)/esc10-run --cache $(DEMO)/features; fi
	$(SOUNDTAG) evaluate $(DEMO)/esc10-run

bench: venv
	$(PY) benchmarks/features.py

clean:
	rm -rf $(VENV) $(DEMO) .cache .pytest_cache
