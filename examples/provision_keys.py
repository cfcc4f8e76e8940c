# The smallest complete use of fleetprov: CreateKeysAndCertificate +
# RegisterThing on a connected umqtt.simple client. Runs on a board and on
# the unix port. (main.py + lib/firstboot.py do the same with retries,
# atomic storage and the reconnect; start there for a product.)
#
# Flash: lib/fleetprov.py, lib/fleetprov_texts.py, lib/timedsock.py, lib/awsnames.py, certs/ca.der,
# certs/claim.der, certs/claim.key.der and set ENDPOINT / TEMPLATE below.
#
# On the unix port, against iotsim (`.venv/bin/python -m tools.iotsim up` in
# another terminal, after `make setup`): run it in iotsim's state folder, which
# holds certs/, with the library and umqtt.simple on MICROPYPATH (deps/ is
# umqtt.simple, tests/device/support the `ussl` name umqtt 1.3.4 imports):
#
#   cd .iotsim
#   MICROPYPATH=.frozen:../lib:../deps:../tests/device/support \
#       ../.venv/bin/micropython ../examples/provision_keys.py 127.0.0.1 8883
#
# The arguments replace ENDPOINT and the port; a board has no sys.argv.
import ssl
import sys

import fleetprov
from umqtt.simple import MQTTClient

ENDPOINT = "xxxxxxxxxxxxxx-ats.iot.eu-west-1.amazonaws.com"
PORT = 8883
TEMPLATE = "FleetprovDemo"
if len(sys.argv) > 2:
    ENDPOINT, PORT = sys.argv[1], int(sys.argv[2])


def read(name):
    with open(name, "rb") as f:
        return f.read()


client = MQTTClient(
    b"claim-example",
    ENDPOINT,
    PORT,
    ssl=True,
    ssl_params={
        "key": read("certs/claim.key.der"),
        "cert": read("certs/claim.der"),
        "cadata": read("certs/ca.der"),
        "cert_reqs": ssl.CERT_REQUIRED,  # verify the endpoint (needs the clock set)
        "server_hostname": ENDPOINT,
    },
)
client.connect()
p = fleetprov.Provisioner(client)
try:
    keys = p.create_keys_and_certificate()
    reg = p.register_thing(TEMPLATE, keys.ownership_token, {"SerialNumber": "0001"})
    print("thing", reg.thing_name, "certificate", keys.certificate_id)
    # keys.certificate_pem and keys.private_key are yours to store (as DER,
    # atomically: see lib/credstore.py) before you disconnect.
except fleetprov.ProvisioningError as err:
    print("provisioning failed:", err, "status", fleetprov.strerror(err.status))
finally:
    p.close()
    client.disconnect()
