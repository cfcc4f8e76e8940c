# The smallest complete use of fleetprov: CreateKeysAndCertificate +
# RegisterThing on a connected umqtt.simple client. Runs on a board and on
# the unix port. (main.py + lib/firstboot.py do the same with retries,
# atomic storage and the reconnect; start there for a product.)
#
# Flash: lib/fleetprov.py, certs/ca.der, certs/claim.der, certs/claim.key.der
# and set ENDPOINT / TEMPLATE below.
import ssl

import fleetprov
from umqtt.simple import MQTTClient

ENDPOINT = "xxxxxxxxxxxxxx-ats.iot.eu-west-1.amazonaws.com"
TEMPLATE = "FleetprovDemo"


def read(name):
    with open(name, "rb") as f:
        return f.read()


client = MQTTClient(
    b"claim-example",
    ENDPOINT,
    8883,
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
