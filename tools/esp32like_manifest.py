# What tools/oldports.py freezes into the 32-bit unix port (1.24.1-32bit), the
# one that stands in for an ESP32's heap: the unix standard variant's own
# frozen modules, and umqtt.simple from the micropython-lib this release pins,
# as ESP32 firmware freezes it (ports/esp32/boards/manifest.py has
# require("umqtt.simple")). Frozen, its code and its names live in the
# firmware image, not in the heap, as on a board. (A MicroPython manifest, run
# by the port's build, not imported by Python.)
include("$(PORT_DIR)/variants/standard/manifest.py")
require("umqtt.simple")
