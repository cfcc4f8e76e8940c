# A complete fleet-provisioning client with your own umqtt.simple connection:
# connect with the claim over TLS (the endpoint verified against the CA),
# get a certificate, register the thing, keep the identity, reconnect as the
# thing and publish. main.py + lib/firstboot.py do the same with retries,
# power-cut-safe storage and the checks a product needs; start there for one.
#
# On a board: copy lib/ (compiled: `make mpy`) and certs/ca.der,
# certs/claim.der, certs/claim.key.der, and set ENDPOINT and TEMPLATE below.
# On the unix port against iotsim (`make setup`, then
# `.venv/bin/python -m tools.iotsim up` in another terminal), from the
# repository's root:
#
#   cd .iotsim && MICROPYPATH=.frozen:../lib:../deps:../tests/device/support \
#       ../.venv/bin/micropython ../examples/provision.py 127.0.0.1 8883 keys
#
# The arguments replace ENDPOINT, the port and the method ("keys": AWS makes
# the key; "csr": the key is made here and never leaves the device); a fourth,
# optional, replaces SERIAL (client ids and thing name follow it: AWS accepts
# one connection a second per client id). A board has no sys.argv.
import sys

import fleetprov
import mqttlink
from pem import pem_to_der

ENDPOINT = "xxxxxxxxxxxxxx-ats.iot.eu-west-1.amazonaws.com"
PORT = 8883
TEMPLATE = "FleetprovDemo"
METHOD = "keys"
SERIAL = "0001"
if len(sys.argv) > 3:
    ENDPOINT, PORT, METHOD = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:
    SERIAL = sys.argv[4]


def read(name):
    with open(name, "rb") as f:
        return f.read()


def connect(client_id, cert, key):
    """A connected umqtt.simple MQTTClient over mutual TLS (cert, key: DER):
    the endpoint verified against the CA, the connection bounded in time."""
    return mqttlink.connect(client_id, ENDPOINT, PORT, cert, key, read("certs/ca.der"), timeout_ms=10000).client


def save(name, data):
    # A product writes these atomically and commits them last (lib/credstore.py).
    with open(name, "wb") as f:
        f.write(data)


client = connect("claim-" + SERIAL, read("certs/claim.der"), read("certs/claim.key.der"))
p = fleetprov.Provisioner(client)
try:
    if METHOD == "csr":
        import csr

        key, request = csr.generate("device-" + SERIAL)  # a P-256 key (DER) and its CSR (PEM)
        made = p.create_certificate_from_csr(request)
    else:
        made = p.create_keys_and_certificate()
        key = pem_to_der(made.private_key)
    reg = p.register_thing(TEMPLATE, made.ownership_token, {"SerialNumber": SERIAL})
except fleetprov.ProvisioningError as err:
    print("provisioning failed:", err)
    raise SystemExit(1)
finally:
    p.close()
    client.disconnect()
cert = pem_to_der(made.certificate_pem)  # DER: what the board's TLS loads
save("certs/thing.crt.der", cert)
save("certs/thing.key.der", key)
print("thing", reg.thing_name, "certificate", made.certificate_id)

thing = connect(reg.thing_name.encode(), cert, key)  # AWS policies expect client id == thing name
thing.publish(b"fleetprov/" + reg.thing_name.encode() + b"/hello", b'{"hello":"world"}', False, 1)  # QoS 1
thing.disconnect()
print("connected as", reg.thing_name, "and published")
