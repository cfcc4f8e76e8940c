# Make a P-256 key pair and CSR on the device: key.der and req.pem in the
# current folder. Usage: micropython make_key.py <common name>
import sys

import csr

key, pem = csr.generate(sys.argv[1])
with open("key.der", "wb") as f:
    f.write(key)
with open("req.pem", "w") as f:
    f.write(pem)
print("made")
