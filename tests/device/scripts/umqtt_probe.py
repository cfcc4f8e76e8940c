# What differs between umqtt.simple releases, exercised through our own code
# against iotsim: the TLS form mqttlink picks, server verification by name,
# check_msg's return values as fleetprov meets them, whether fleetprov's
# close() unsubscribes, and a whole CreateKeysAndCertificate + RegisterThing
# round trip with a reconnect as the new thing. Prints one "RESULT <json>" line.
#
#   micropython umqtt_probe.py <port> <cert_dir> <template> <serial>
import json
import sys

import fleetprov
import mqttlink
from pem import pem_to_der
from umqtt import simple

port, cert_dir, template, serial = sys.argv[1:5]
port = int(port)
result = {}


def read(name):
    with open(cert_dir + "/" + name, "rb") as f:
        return f.read()


ca, claim, claim_key = read("ca.der"), read("claim.der"), read("claim.key.der")
# which interpreter and which umqtt.simple this really is
result["micropython"] = ".".join(str(n) for n in sys.implementation.version[:3])
result["umqtt_file"] = simple.__file__

# 1. A name the server certificate does not carry is refused by TLS, not by MQTT.
try:
    mqttlink.connect("probe-bad-" + serial, "127.0.0.1", port, claim, claim_key, ca,
                     server_hostname="not-the-server.example", timeout_ms=10000).close()
    result["wrong_name"] = "connected"
except mqttlink.ConnectError as exc:
    result["wrong_name"] = "refused" if exc.refused else "tls-error"

# 2. The claim connection, and which TLS form this umqtt took.
link = mqttlink.connect("probe-" + serial, "127.0.0.1", port, claim, claim_key, ca,
                        server_hostname="localhost", timeout_ms=10000)
client = link.client
result["tls_form"] = "ssl_params" if client.ssl is True else "context"
result["has_unsubscribe"] = hasattr(client, "unsubscribe")
# what of the claim's DER the connected client still holds (TLS has its own copy)
params = getattr(client, "ssl_params", None) or {}
result["held_der"] = [k for k in params if params[k] is claim or params[k] is claim_key or params[k] is ca]

# 3. Record what check_msg returns and whether close() unsubscribes.
check_returns = []
real_check = client.check_msg


def check_msg(*args):
    r = real_check(*args)
    if r not in check_returns:
        check_returns.append(r)
    return r


client.check_msg = check_msg
unsubscribed = []
if result["has_unsubscribe"]:
    real_unsub = client.unsubscribe

    def unsubscribe(topic):
        unsubscribed.append(topic.decode() if isinstance(topic, bytes) else topic)
        return real_unsub(topic)

    client.unsubscribe = unsubscribe

p = fleetprov.Provisioner(client, "json", mqtt_timeout_ms=3000)
try:
    creds = p.create_keys_and_certificate(timeout_ms=20000)
    reg = p.register_thing(template, creds.ownership_token, {"SerialNumber": serial}, timeout_ms=20000)
finally:
    p.close()
    link.close()
result["check_msg_returns"] = [r if r is None or isinstance(r, int) else repr(r) for r in check_returns]
result["unsubscribed"] = unsubscribed

# 4. Reconnect as the new thing: a QoS 1 publish gets its PUBACK.
cert_der = pem_to_der(creds.certificate_pem)
own = mqttlink.connect(reg.thing_name, "127.0.0.1", port, cert_der, pem_to_der(creds.private_key), ca,
                       server_hostname="localhost", timeout_ms=10000)
own.client.publish(("fleetprov/" + reg.thing_name + "/hello").encode(), b"hello", qos=1)
own.close()
result.update(certificate_id=creds.certificate_id, thing_name=reg.thing_name, reconnected=True)
print("RESULT " + json.dumps(result))
