# code.py (CircuitPython): runs after boot.py, and again on every save or reload.
# Not provisioned yet -> fleet provisioning with the claim certificate
# (lib/firstboot.py through lib/cpboard.py); provisioned -> straight to the
# application below, connected as this device's own thing.
#
# application() is your starting point: `link.client` is connected with the
# device's own certificate; it offers set_callback / subscribe / publish /
# check_msg like umqtt.simple, and `link.client.mqtt` is the MiniMQTT client.

import cpboard
import mqttlink


def application(fb, link):
    """Publish one hello on the configured app topic (QoS 1).

    Replace this with the device's work: read sensors, publish, subscribe
    (link.client.set_callback / subscribe / check_msg), sleep."""
    topic = fb.topic(fb.cfg["app_topic"])
    msg = '{{"hello":"{}","uptime_ms":{}}}'.format(fb.thing_name(), fb.progress.elapsed())
    mqttlink.publish(link, topic, msg.encode(), fb.cfg["mqtt_timeout_ms"])
    fb.step("hello", "published to {}".format(topic.decode()))


def main():
    result = cpboard.run(application)
    if result == "retry":
        # Nobody may be watching: try again from a fresh code.py run. A
        # settings or cloud-side refusal ("fatal") stops here instead, so a
        # reload loop never hides it.
        cpboard.retry_later()


main()
