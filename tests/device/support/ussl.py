# Test environment only: umqtt.simple 1.3.4 does `import ussl`, a name the
# MicroPython unix port (1.22+) no longer provides. ESP32 firmware that freezes
# umqtt 1.3.4 has ussl itself, so this file is never deployed.
from ssl import *  # noqa: F401,F403
