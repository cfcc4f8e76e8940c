# Test environment only: umqtt.simple 1.3.4 does `import ussl`, a name
# MicroPython dropped in 1.23. Firmware that freezes umqtt 1.3.4 (1.22 and
# older) has ussl itself, so this file is never deployed; the device tier puts
# it on the path only for 1.3.4 on a newer port (tools/unixboard.Target).
from ssl import *  # noqa: F401,F403
