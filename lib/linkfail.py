# Why a connection failed, in words a user can act on. lib/mqttlink.py loads
# this module only when a connect() fails, so a device that connects never
# holds these texts; the boot flow releases it with the other code it no
# longer needs. One function: the failure -> (message, ConnectError's flags).

import errno

from timedsock import describe

# Failures of the network itself while connecting: nothing listening, no
# route, no answer in time, out of buffers. Any other OSError after the name
# resolved means the server hung up during the TLS handshake or right after it
# (a refused client certificate: EPIPE on the next write, ECONNRESET, an
# mbedTLS alert; MicroPython's errno has no EPIPE to name).
_NETWORK = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EAGAIN,
            errno.ENOMEM, errno.ENOBUFS, errno.EINPROGRESS, errno.EALREADY)

_CONNACK = ("", "unacceptable protocol version", "client id rejected", "server unavailable",
            "bad user name or password", "not authorised")


def explain(ex, kind, host, port, server_hostname, resolved):
    """(message, flags for ConnectError) of ``ex``, raised by umqtt's connect().
    ``kind``: "connack" (umqtt's MQTTException), "closed" (no CONNACK came),
    "unresolved" (getaddrinfo failed; ex is its error) or None (anything else);
    ``resolved``: the name had resolved."""
    where = "{}:{}".format(host, port)
    if kind == "connack":
        code = ex.args[0] if ex.args else None
        words = _CONNACK[code] if isinstance(code, int) and 0 < code < len(_CONNACK) else "unknown code"
        return "{} refused the connection: CONNACK {} ({})".format(where, code, words), {"refused": True, "code": code}
    if kind == "closed":
        # how AWS turns away a revoked certificate
        return "{} closed the connection before CONNACK".format(where), {"refused": True}
    if kind == "unresolved":
        return ("cannot resolve {} ({}): check `endpoint` in config.json (the account's -ats endpoint) "
                "and the network".format(host, describe(ex)), {})
    if isinstance(ex, ValueError):
        # MicroPython's TLS reports a server certificate that fails its check
        # this way (mbedTLS's words): the configuration, not the network.
        text = " ".join(str(ex).split())
        return "{} presented a certificate that failed verification: {}: {}".format(
            where, text, _verify_hint(text, host, server_hostname)), {"verify": True}
    n = ex.args[0] if ex.args else None
    if n == errno.ECONNREFUSED:
        local = ""
        if host in ("127.0.0.1", "localhost", "::1"):
            local = " (for iotsim on this computer: is `python -m tools.iotsim up` running?)"
        return ("{} refused the TCP connection: nothing listens there. Check `endpoint` and `port` in "
                "config.json{}".format(where, local), {})
    if resolved and isinstance(n, int) and n not in _NETWORK:
        return ("{} closed the TLS handshake ({}): it refused this device's certificate. Likely: the "
                "certificate has expired or is not yet valid{}; it was issued by a CA the endpoint does "
                "not trust (a claim certificate not registered in this account); or it belongs to "
                "another endpoint (account or region). The server's log names the cause".format(
                    where, describe(ex), _clock_hint()), {"handshake": True})
    # (mbedTLS messages span lines: keep the report on one.)
    return "cannot connect to {}: {}{}".format(where, describe(ex), _clock_hint()), {}


def _verify_hint(text, host, server_hostname):
    # What to fix, by mbedTLS's words for the failed check.
    if "CN" in text or "name" in text.lower():
        return "check `server_hostname` in config.json ({}): the name the endpoint's certificate " \
               "carries".format(server_hostname)
    if "validity" in text or "future" in text or "expired" in text:
        return "check the clock" + (_clock_hint() or " (it must be set before TLS, as boot.py does)")
    return "check `ca` in config.json: the CA that signed {}'s certificate (Amazon Root CA 1 for " \
           "AWS IoT's -ats endpoints; for iotsim, the ca.der in its state folder)".format(host)


def _clock_hint():
    # A board whose clock was never set reads 2000-01-01 (epoch 1970 on some
    # ports): every certificate is "not yet valid" and TLS fails for that.
    import time

    year = time.gmtime()[0]
    if year < 2024:
        return (" (the clock reads {}: TLS cannot check certificate dates; set it with ntptime, "
                "as boot.py does)".format(year))
    return ""
