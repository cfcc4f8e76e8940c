"""iotsim: a local stand-in for AWS IoT Core fleet provisioning.

mosquitto (with the C plugin in plugin/) is the broker; a CPython service answers
the provisioning topics. See docs/iotsim-internals.md.
"""
