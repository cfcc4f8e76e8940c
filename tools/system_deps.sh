#!/bin/sh
# Install the Debian packages the host tooling needs, or say exactly how to.
#   mosquitto       the broker iotsim runs (2.0.11 on Debian 12)
#   mosquitto-clients  mosquitto_rr/mosquitto_pub: docs/iotsim.md's manual steps (and their test)
#   mosquitto-dev   headers for iotsim's broker plugin
#   libssl-dev      OpenSSL (SHA-256 of client certificates) for the plugin
#   socat           the pseudo-terminal for the virtual-board deploy test
#   openssl         `openssl req -verify` in the CSR tests
#   gcc, make       the plugin; the MicroPython 1.22/1.24 unix ports (tools/oldports.py)
#   gcc-multilib    (x86_64) the 32-bit 1.24.1 unix port, whose heap is an ESP32's size
#   python3-venv    `python3 -m venv` on Debian's own Python
set -eu
PACKAGES="mosquitto mosquitto-clients mosquitto-dev libssl-dev socat openssl gcc make"
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then PACKAGES="$PACKAGES python3-venv"; fi
if [ "$(uname -m)" = x86_64 ]; then PACKAGES="$PACKAGES gcc-multilib"; fi
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v mosquitto_rr >/dev/null 2>&1 || missing="$missing mosquitto-clients"
[ -f /usr/include/mosquitto_plugin.h ] || missing="$missing mosquitto-dev"
[ -f /usr/include/openssl/sha.h ] || missing="$missing libssl-dev"
command -v socat >/dev/null 2>&1 || missing="$missing socat"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
command -v make >/dev/null 2>&1 || missing="$missing make"
if [ "$(uname -m)" = x86_64 ] && ! echo 'int main(void) { return 0; }' | gcc -m32 -x c - -o /dev/null >/dev/null 2>&1; then
    missing="$missing gcc-multilib"
fi
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing="$missing python3-venv"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
    # The Debian package enables a system-wide broker on 1883; iotsim runs its own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
else
    echo "missing Debian packages:$missing" >&2
    echo "run:  sudo apt-get update && sudo apt-get install -y $PACKAGES" >&2
    exit 1
fi
