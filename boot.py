# boot.py: bring the network up before main.py runs.
#
# On a board (a `network` module with WLAN): join the Wi-Fi named in
# config.json, then set the clock from NTP - TLS certificate verification
# fails with the clock at 2000-01-01. On the unix port (no network.WLAN) the
# host is already online and its clock is right, so this does nothing.
# Failures are printed, never raised: main.py reports what it cannot reach.


def _wifi(cfg):
    import network
    import time

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        print("boot: joining Wi-Fi {}".format(cfg["ssid"]))
        wlan.connect(cfg["ssid"], cfg["password"])
        for _ in range(200):  # 20 s
            if wlan.isconnected():
                break
            time.sleep_ms(100)
    if wlan.isconnected():
        print("boot: Wi-Fi up, address {}".format(wlan.ifconfig()[0]))
        return True
    print("boot: Wi-Fi {} did not connect within 20 s".format(cfg["ssid"]))
    return False


def _clock(host):
    try:
        import ntptime

        ntptime.host = host
        for _ in range(3):
            try:
                ntptime.settime()
                print("boot: clock set from {}".format(host))
                return
            except OSError:
                pass
    except ImportError:
        pass
    print("boot: clock NOT set from {}: TLS verification will fail".format(host))


def _boot():
    try:
        import network

        network.WLAN
    except (ImportError, AttributeError):
        return  # unix port: nothing to bring up
    try:
        import devconfig

        cfg = devconfig.load()
    except Exception as ex:
        print("boot: {}".format(ex))
        return
    if cfg["wifi"] is None:
        print("boot: no wifi in config.json; assuming the network is up")
    elif not _wifi(cfg["wifi"]):
        return
    _clock(cfg["ntp_host"])


_boot()
# Its functions would stay in RAM for the whole run (boot.py is not a
# module one can unload): drop them.
del _boot, _wifi, _clock
