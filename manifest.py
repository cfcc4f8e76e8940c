# MicroPython manifest: freezes the fleetprov device library into firmware.
#
# Frozen modules run their bytecode from flash instead of loading it into the
# heap, so the library's code costs no RAM; see docs/firmware.md for the
# build (ESP32: FROZEN_MANIFEST) and what it saves. Use it from a board
# manifest that keeps the port's own frozen modules:
#
#     include("$(PORT_DIR)/boards/manifest.py")
#     include("/path/to/fleetprov/manifest.py")
#
# boot.py, main.py and config.json stay on the board's filesystem.

metadata(
    description="AWS IoT Fleet Provisioning for MicroPython: the device library",
    version="0.1.0",
)

# The port's manifest usually requires it already (the ESP32 one does); a second
# require of the same package is ignored by the manifest tool.
require("umqtt.simple")

# Every lib/*.py, found when the firmware is built, so a new device module is
# frozen without editing this file. (The manifest tool runs this file with the
# manifest's folder as the current directory.)
import os

for _name in sorted(os.listdir("lib")):
    if _name.endswith(".py"):
        module(_name, base_path="lib")
