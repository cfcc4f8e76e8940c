"""The progress steps of a first boot, in order: what every tier expects
(CPython with a fake cloud, the unix port against iotsim, the CircuitPython
board). Device-compatible: plain lists."""

# A factory-fresh device with method "keys": claim connection, certificate,
# RegisterThing, the claim connection closed, the identity committed, then
# the application as the new thing ("hello" is main.py's).
FIRST_BOOT = [
    "config",
    "not-provisioned",
    "connect-claim",
    "certificate",
    "register",
    "disconnect-claim",
    "commit",
    "connect-thing",
    "confirm",
]
APPLICATION = ["hello", "done"]
# Method "csr": the key and CSR are made before the claim connection.
CSR_FIRST_BOOT = FIRST_BOOT[:2] + ["keygen"] + FIRST_BOOT[2:]
# Already provisioned: straight to the thing.
PROVISIONED_BOOT = ["config", "provisioned", "connect-thing"]
# A rotation, after connect-thing: key and CSR made on the device, the new
# certificate under the old identity, registered, connected, committed, and
# the old certificate retired over the new connection.
ROTATION = ["keygen", "certificate", "register", "connect-new", "rotated", "retired"]
# The writes that stage a new identity, in order (a ".tmp" written, then renamed):
# the key and certificate as they came, then the pending record vouching for them.
STAGE_WRITES = ["pending.key.tmp", "pending.key", "pending.crt.tmp", "pending.crt", "pending.json.tmp", "pending.json"]
# The writes that commit a staged identity, in order: the identity files named
# after its certificate ("*"), the record (the commit point), the staged files gone.
COMMIT_WRITES = ["*.key.der.tmp", "*.key.der", "*.crt.der.tmp", "*.crt.der", "provisioned.json.tmp", "provisioned.json",
                 "pending-cleared"]
