# boot.py (CircuitPython): runs once at power-on or reset, before USB starts.
#
# CIRCUITPY is writable by the computer or by code, never both. First boot
# must write the device's identity to certs/, so by default code gets the
# drive and the computer sees it read-only. Two ways to give the drive back
# to the computer (to edit files), checked here:
#   - a file named usb-write at the top of the drive (make it from the serial
#     console's REPL: open("usb-write", "w").close(), then reset; delete it
#     from the computer and reset to give the drive back to code);
#   - the pin named by FLEETPROV_USB_WRITE_PIN in settings.toml (e.g. "BUTTON"),
#     held low while the board resets.
# What was decided is printed to boot_out.txt.

import os

import storage

MARKER = "usb-write"


def _marker():
    try:
        os.stat(MARKER)
        return True
    except OSError:
        return False


def _pin_held():
    name = os.getenv("FLEETPROV_USB_WRITE_PIN")
    if not name:
        return False
    import board
    import digitalio

    pin = getattr(board, name, None)
    if pin is None:
        print("boot: this board has no pin {} (FLEETPROV_USB_WRITE_PIN)".format(name))
        return False
    button = digitalio.DigitalInOut(pin)
    button.switch_to_input(pull=digitalio.Pull.UP)
    held = not button.value
    button.deinit()
    return held


def _boot():
    if _marker():
        why = "{} exists".format(MARKER)
    elif _pin_held():
        why = "{} held at reset".format(os.getenv("FLEETPROV_USB_WRITE_PIN"))
    else:
        storage.remount("/", readonly=False)
        print("boot: CIRCUITPY is writable by code, read-only to the computer "
              "(make a file named {} and reset to edit files)".format(MARKER))
        return
    print("boot: {}: CIRCUITPY stays with the computer; code cannot write "
          "(first boot cannot store an identity)".format(why))


_boot()
