# main.py: runs after boot.py. Not provisioned yet -> fleet provisioning with
# the claim certificate (lib/firstboot.py); provisioned -> straight to the
# application below, connected as this device's own thing.
#
# application() is your starting point: `link.client` is a connected
# umqtt.simple MQTTClient, authenticated with the device's own certificate.

import firstboot
import mqttlink


def application(fb, link):
    """Publish one hello on the configured app_topic (QoS 1).

    Replace this with the device's work: read sensors, publish, subscribe
    (link.client.set_callback / subscribe / check_msg), sleep."""
    topic = fb.topic(fb.cfg["app_topic"])
    msg = '{{"hello":"{}","uptime_ms":{}}}'.format(fb.thing_name(), fb.progress.elapsed())
    mqttlink.publish(link, topic, msg.encode(), fb.cfg["mqtt_timeout_ms"])
    fb.step("hello", "published to {}".format(topic.decode()))


def main():
    result = firstboot.run(application)
    if result == "ok":
        return
    try:
        import machine

        reset = machine.reset
    except (ImportError, AttributeError):
        reset = None
    if result == "retry" and reset is not None:
        # On a board with nobody watching: try again after a pause, from a
        # clean boot. A configuration or cloud-side refusal ("fatal") stops
        # at the REPL instead, so a reset loop never hides it.
        import time

        print("fleetprov: retrying in 60 s (Ctrl-C for the REPL)")
        time.sleep(60)
        reset()
    if reset is None:
        import sys

        # The unix port: the exit status tells scripts and tests.
        sys.exit(1)


main()
