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
    """The first boot, then the application. Returns "ok", "retry" or "fatal"."""
    result = firstboot.run(application)
    if result == "retry":
        try:
            import machine

            reset = machine.reset
        except (ImportError, AttributeError):  # the unix port: nothing to reset
            return result
        # On a board with nobody watching: try again after a pause, from a
        # clean boot. A configuration or cloud-side refusal ("fatal") stops
        # at the REPL instead, so a reset loop never hides it.
        import time

        print("fleetprov: retrying in 60 s (Ctrl-C for the REPL)")
        time.sleep(60)
        reset()
    return result


# The REPL follows whatever happened, with the fleetprov: line that says why.
result = main()
