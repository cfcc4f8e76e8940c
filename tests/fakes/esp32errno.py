# The error numbers of ESP32 firmware: ESP-IDF takes them from newlib's
# sys/errno.h, not from Linux. Tests put this module in place of `errno` in
# timedsock to run the device code as an ESP32 numbers its errors.
# (Device-compatible: imported on CPython and on the MicroPython unix port.)

ECONNRESET = 104  # the same number on Linux
ECONNABORTED = 113  # Linux: 103
ECONNREFUSED = 111  # the same number on Linux
EHOSTUNREACH = 118  # Linux: 113
ETIMEDOUT = 116  # Linux: 110
ENOTCONN = 128  # Linux: 107; 0x80, SUBACK's "failure" code

errorcode = {
    ECONNRESET: "ECONNRESET",
    ECONNABORTED: "ECONNABORTED",
    ECONNREFUSED: "ECONNREFUSED",
    EHOSTUNREACH: "EHOSTUNREACH",
    ETIMEDOUT: "ETIMEDOUT",
    ENOTCONN: "ENOTCONN",
}
