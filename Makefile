# vppagent: `make setup` installs, `make demo` runs the main job, `make test` runs the tests.
# All three are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Debian packages the project needs (tests run real namespaces and packets).
APT_PACKAGES := python3-venv python3-dev iproute2 iputils-ping netcat-openbsd iptables nftables ipset conntrack iperf3 containernetworking-plugins tcpdump etcd-server
STAMP := $(VENV)/.installed

.PHONY: setup demo test proto perf clean

setup: $(STAMP) proto

$(STAMP): pyproject.toml setup.py Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages (run as root to install): $$missing" >&2; fi; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	@touch $(STAMP)

proto: $(STAMP)
	$(PY) -m vppagent.api.protogen

# The agent on the Linux dataplane with CNI-created pods, real packets vs the evaluator (root).
# DEMO_ARGS="--dataplane iptables" for iptables mode.
DEMO_ARGS ?=
demo: setup
	$(PY) -m vppagent.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q tests

# Benchmarks print tables and write plots to perf/out/ (root; ~15 min on 2 cores). See perf/README.md.
perf: setup
	$(PIP) install -q -e '.[perf]'
	$(PY) perf/calc_bench.py
	$(PY) perf/cni_bench.py
	$(PY) perf/linux_control_bench.py
	$(PY) perf/linux_dataplane_bench.py
	$(PY) perf/sync_bench.py
	$(PY) perf/vpp_bench.py
	$(PY) perf/vpp_dataplane_bench.py

clean:
	rm -rf $(VENV) vppagent/api/gen build *.egg-info
