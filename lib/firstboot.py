# The first boot on MicroPython: read config.json, then run the boot flow
# (lib/bootflow.py): provisioned? connect as the thing : provision first.
# main.py calls run(); the flow's code is imported only once the config has
# been read and its reader released, so the two never share the heap.

from runtime import release, ticks_ms


def run(app=None, config="config.json", printer=print, hook=None):
    """Load ``config``, make sure the device is provisioned, connect as its
    thing and call ``app(firstboot, link)`` (firstboot: a bootflow.FirstBoot).
    Returns "ok", "retry" (a later boot may succeed) or "fatal" (fix the
    configuration or the cloud side). ``printer``: callable(str) for the
    progress lines; ``hook``: callable(step) or None (see device.Board)."""
    t0 = ticks_ms()  # the progress clock starts before the config is read
    import devconfig

    try:
        cfg = devconfig.load(config)
    except devconfig.ConfigError as ex:
        printer("fleetprov: " + str(ex))
        return "fatal"
    finally:
        devconfig = None
        release("devconfig", "awsnames")  # needed only to read the file
    import bootflow
    from device import Board

    return bootflow.boot(cfg, Board(printer, hook), app, t0, config)
