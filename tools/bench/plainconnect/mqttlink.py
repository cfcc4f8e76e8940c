# The bench's stand-in for lib/mqttlink.py (MicroPython, first on MICROPYPATH):
# examples/provision.py's connections made the way a user's own code makes
# them, with umqtt.simple's connect() and nothing else. TLS as strict as
# mqttlink's (CA and server name checked); no TCP_NODELAY and no deadline.
from umqtt.simple import MQTTClient

try:
    import ssl
except ImportError:  # firmware <= 1.22
    import ussl as ssl


class Link:
    def __init__(self, client):
        self.client = client


def connect(client_id, host, port, cert, key, ca, timeout_ms=None):
    if isinstance(client_id, str):
        client_id = client_id.encode()
    try:  # umqtt 1.3.4 and 1.6+
        params = {"key": key, "cert": cert, "cadata": ca, "cert_reqs": ssl.CERT_REQUIRED,
                  "server_hostname": host}
        client = MQTTClient(client_id, host, port=port, ssl=True, ssl_params=params)
    except TypeError:  # umqtt 1.4 and 1.5 take an SSLContext only (and name the server themselves)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=ca)
        ctx.load_cert_chain(cert, key)
        client = MQTTClient(client_id, host, port=port, ssl=ctx)
    client.connect()
    return Link(client)
