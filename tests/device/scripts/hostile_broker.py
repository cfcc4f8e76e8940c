# fleetprov with the real umqtt.simple on the MicroPython unix port, against
# a scripted broker on 127.0.0.1 (tests/fakes/rawbroker.py).
#   micropython hostile_broker.py <port> <timeout_ms> <mqtt_timeout_ms> [esp32] [heap]
# Runs one CreateKeysAndCertificate and prints
#   status <n> elapsed_ms <ms> check_msg <calls> idle_alloc <bytes,...>
#   message <str(err)>
# esp32: timedsock numbers errors as ESP32 firmware does (compiled code only).
# heap: gc is off during the call, so idle_alloc, the heap allocated between
# consecutive check_msg() calls, shows every allocation (a silent server only:
# a flood would fill the heap).
import gc
import socket
import sys

import fleetprov
import mqttlink
import runtime
import timedsock
from umqtt.simple import MQTTClient

port, timeout_ms, mqtt_ms = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if "esp32" in sys.argv[4:]:
    import esp32errno

    timedsock.errno = esp32errno

_MAX = 256
marks = [0] * _MAX
count = [0]


class CountingClient(MQTTClient):
    def check_msg(self):
        n = count[0]
        if n < _MAX:
            marks[n] = gc.mem_alloc()
        count[0] = n + 1
        return MQTTClient.check_msg(self)


c = CountingClient(b"hostile-test", "127.0.0.1", port=port)
c.connect()
mqttlink.nodelay(c.sock, socket)  # as mqttlink.connect does: no Nagle delays
p = fleetprov.Provisioner(c, timeout_ms=timeout_ms, mqtt_timeout_ms=mqtt_ms)
gc.collect()
if "heap" in sys.argv[4:]:
    gc.disable()
t0 = runtime.ticks_ms()
status, message = 0, ""
try:
    p.create_keys_and_certificate()
except fleetprov.ProvisioningError as exc:
    status, message = exc.status, str(exc)
elapsed = runtime.ticks_diff(runtime.ticks_ms(), t0)
gc.enable()
n = min(count[0], _MAX)
deltas = [marks[i + 1] - marks[i] for i in range(1, n - 1)]
print("status {} elapsed_ms {} check_msg {} idle_alloc {}".format(
    status, elapsed, count[0], ",".join(str(d) for d in deltas)))
print("message " + message)
