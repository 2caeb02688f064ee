# Two commands do all set-up: `make run` (the demo daemon) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-container image podman-host system-deps bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[daemon,test,bench]'
	touch $(STAMP)

# promtool/prometheus, amtool and docker-compose come from Debian; tests use the real tools.
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v amtool >/dev/null \
	  && command -v docker-compose >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager docker-compose; }

run: $(STAMP)
	$(VENV)/bin/streamd demo

test: $(STAMP) system-deps
	$(PY) -m pytest -q -ra

# The image, built and run as deployed (uid 10001, read-only root, state volume): podman, as root.
# Separate from `make test` to keep that under 25 minutes; .ci/run runs both.
podman-host:
	bash deploy/podman/host-setup.sh

image: $(STAMP) podman-host
	$(PY) deploy/podman/build.py

test-container: $(STAMP) podman-host
	$(PY) -m pytest -q -rA -m container tests/test_container.py

bench-quick: $(STAMP)
	$(VENV)/bin/streamd bench cl --dataset mnist5k --split class --tasks 5 --objective simsiam --strategies finetune,replay,lump --quick --out bench-results.json --plot bench-results.png

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
