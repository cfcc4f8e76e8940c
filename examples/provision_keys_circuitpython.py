# The smallest complete use of fleetprov on CircuitPython: CreateKeysAndCertificate
# + RegisterThing over Adafruit MiniMQTT (lib/mmqttclient.py). code.py +
# lib/cpboard.py do the same with retries, atomic storage and the reconnect;
# start there for a product (docs/circuitpython.md).
#
# CIRCUITPY: lib/fleetprov.py, lib/fleetprov_texts.py, lib/mmqttclient.py, lib/mqttlink.py,
# lib/timedsock.py, lib/awsnames.py, the circup libraries (adafruit_minimqtt, ...), and
# certs/ca.pem, certs/claim.pem, certs/claim.key.pem (PEM); Wi-Fi from
# settings.toml; set ENDPOINT / TEMPLATE below. The clock must be set (NTP)
# for the endpoint's certificate to verify.
import socketpool
import wifi

import fleetprov
import mmqttclient

ENDPOINT = "xxxxxxxxxxxxxx-ats.iot.eu-west-1.amazonaws.com"
TEMPLATE = "FleetprovDemo"

with open("certs/ca.pem") as f:
    ca_pem = f.read()
link = mmqttclient.connect("claim-example", ENDPOINT, 8883, "certs/claim.pem", "certs/claim.key.pem",
                           ca_pem, pool=socketpool.SocketPool(wifi.radio))
p = fleetprov.Provisioner(link.client)
try:
    keys = p.create_keys_and_certificate()
    reg = p.register_thing(TEMPLATE, keys.ownership_token, {"SerialNumber": "0001"})
    print("thing", reg.thing_name, "certificate", keys.certificate_id)
    # keys.certificate_pem and keys.private_key are yours to store (as PEM,
    # atomically: credstore.Store(pem=True).commit) before you disconnect.
except fleetprov.ProvisioningError as err:
    print("provisioning failed:", err, "status", fleetprov.strerror(err.status))
finally:
    p.close()
    link.close()
