# One provisioning run on the MicroPython unix port with the real umqtt.simple
# over mutual TLS: claim connection -> Create* -> RegisterThing -> reconnect as
# the new certificate and publish. Prints one "RESULT <json>" line.
#
#   micropython provision_once.py <port> <cert_dir> <fmt> <method> <template> <serial> [create_ms register_ms]
#
# cert_dir holds ca.der, claim.der, claim.key.der (and for method=csr a
# host-made csr.pem + csr.key.der). The new credentials are written there as
# device.der / device.key.der.
import json
import sys

import fleetprov
import mqttlink
from pem import pem_to_der

port, cert_dir, fmt, method, template, serial = sys.argv[1:7]
port = int(port)


def read(name):
    with open(cert_dir + "/" + name, "rb") as f:
        return f.read()


def write(name, data):
    with open(cert_dir + "/" + name, "wb") as f:
        f.write(data)


def emit(**kw):
    print("RESULT " + json.dumps(kw))


ca = read("ca.der")
link = mqttlink.connect("dev-" + serial, "127.0.0.1", port, read("claim.der"), read("claim.key.der"), ca,
                        server_hostname="localhost", timeout_ms=10000)
create_ms, register_ms = (int(sys.argv[7]), int(sys.argv[8])) if len(sys.argv) > 8 else (20000, 20000)
p = fleetprov.Provisioner(link.client, fmt, mqtt_timeout_ms=3000)
try:
    if method == "keys":
        creds = p.create_keys_and_certificate(timeout_ms=create_ms)
        key_der = pem_to_der(creds.private_key)
    else:
        creds = p.create_certificate_from_csr(read("csr.pem").decode(), timeout_ms=create_ms)
        key_der = read("csr.key.der")
    reg = p.register_thing(template, creds.ownership_token, {"SerialNumber": serial}, timeout_ms=register_ms)
except fleetprov.ProvisioningError as exc:
    emit(ok=False, status=exc.status, status_code=exc.status_code, error_code=exc.error_code, message=str(exc))
    sys.exit(0)
finally:
    try:
        p.close()
    except fleetprov.ProvisioningError:
        pass
    link.close()

cert_der = pem_to_der(creds.certificate_pem)
write("device.der", cert_der)
write("device.key.der", key_der)
# Reconnect as the new identity and prove it works: a QoS 1 publish gets its PUBACK.
own = mqttlink.connect(reg.thing_name, "127.0.0.1", port, cert_der, key_der, ca, server_hostname="localhost",
                       timeout_ms=10000)
own.client.publish(("fleetprov/" + reg.thing_name + "/hello").encode(), b"hello", qos=1)
own.close()
emit(ok=True, certificate_id=creds.certificate_id, thing_name=reg.thing_name,
     device_configuration=reg.device_configuration, reconnected=True)
