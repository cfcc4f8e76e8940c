"""NIST P-256 (secp256r1) key generation and ECDSA-SHA256 signing in plain Python.

Runs unchanged on MicroPython 1.22+ (arbitrary-precision ints, hashlib.sha256,
os.urandom) and CPython 3.11. No native module: the private key is made and
used on the device and never leaves it.

Public API:
    generate_key(urandom=None) -> int       private scalar d in [1, n-1]
    public_key(d) -> (x, y)                 d*G, affine coordinates
    mul_base(k) -> (x, y) or None           k*G for 0 <= k < 2**256 (None: infinity)
    sign(d, digest) -> (r, s)               ECDSA over a 32-byte SHA-256 digest,
                                            nonce per RFC 6979 (deterministic)
    nonces(d, digest)                       the RFC 6979 nonce sequence (generator)
    on_curve(x, y) -> bool
    check_scalar(d)                         ValueError unless 1 <= d <= n-1

Constant shape: every scalar multiplication here is by the fixed base point G,
done with a Lim-Lee comb (4 teeth, two sub-combs) over exactly 32 columns (all
256 bits, the leading zeros included). Each column costs one doubling and two
(table lookup, addition) steps; a lookup reads all 16 entries of its table and
selects one with masks (no index by a secret), and the arithmetic uses the
complete projective formulas of Renes, Costello and Batina (2016, algorithms
4 and 6 for a = -3): they have no special case for the point
at infinity or for P == Q, so the sequence of field operations is the same for
every scalar and there is no secret-dependent branch or early exit. One field
inversion at the end (Fermat: a fixed public exponent).

Limit: Python integers are not constant-time objects. A value with leading
zero bits is a shorter bignum, so an individual multiplication can take a few
nanoseconds less; the shape (which operations, how many, in which order) does
not depend on the key. That is the property asked for; a timing attack on a
device that makes its key once, at first boot, and signs one CSR with it, is
not a practical threat model for this code.
"""

import hashlib
import os

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

# Curve: y^2 = x^3 - 3x + B over GF(P), group order N, generator (GX, GY).
P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

_M256 = (1 << 256) - 1
_KEY_TRIES = const(16)  # a draw >= n has probability 2**-32: 16 misses mean a broken RNG
_NONCE_TRIES = const(8)  # same for RFC 6979 candidates and r == 0 or s == 0

# Comb tables (Lim-Lee, 4 teeth 64 bits apart, two sub-combs 32 bits apart):
# _COMB[i] = sum over j of bit j of i times 2**(64*j) * G and _COMB32[i] is
# 2**32 * _COMB[i]. Affine coordinates packed as x | y << 256 | z << 512
# (z = 1; entry 0 is the point at infinity (0 : 1 : 0)). Packing makes the
# full-table scan one AND and one OR per entry. Precomputed on the host (two
# tables halve the doublings: 32 instead of 64); tests/host/test_p256_csr.py
# recomputes them from G.
_COMB = (
    0x10000000000000000000000000000000000000000000000000000000000000000,
    0x14fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f56b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296,
    0x1bff44ae8f5dba80d6f4ad4bcb3df188b34b1a65050fe82f5e41124545f462ee70fa822bc2811aaa58492592e326e25de29493baaad651f7e90e75cb48e14db63,
    0x172aac7e0d09b46447f1ddb25ff1e3c6f5bb1eeada9d806a5aa54a291c08127a0300a4bbc89d6726fb257c0de95e02789e96c98fd0d35f1fa93391ce2097992af,
    0x12d4825ab834131eee12e9d953a4aaff73d349b95a7fae5000c7e33c972e25b32447d739beedb5e67fb982fd588c6766efc35ff7dc297eac357c84fc9d789bd85,
    0x1611e9fc37dbb2c9bc1ee9807022c219c23183b0895ca1740196035a77376d8a8ef9519328a9c72ffddc6068bb91dfc60ef7fbd2b1a0a11b713949c932a1d367f,
    0x1157164848aecb8510afa40018d9d50e59fb3d576dbdefbe144ffe216348a964c550663797b51f5d87dea6482e11238bf2936df5ec6c9bc36cae2b1920b57f4bc,
    0x1eafd72ebdbecc17b0990e6a158006cee85f22cfe2844b645cac917e2731a3479eb5d7745b21141eaa2e8f483f43e43917ccd84e70d715f26e48ecafffc5cde01,
    0x1674f84749b0b881666b8babd2d27ecdf824a920c2284059bf2bab833c357f5f4a6d39677a78492762736ff8344315fc596439591a3c6b94a6cf20ffb313728be,
    0x142b99082de8306631ec0057206947281fb9ae16f3b9122a5a4c36165b824bbb04e769e7672c9ddad31855f7db8c7fedb74e02f080203a56b2df48c04677c8a3e,
    0x1b6cb3f5d7b72c321de53142c12309def6ace570ebde08d4f9c62b9121fe0d97678878ef61c6ce04d7fdc1ca008a1c478d1f89e799c0ce1316ef95150dda868b9,
    0x1dd5ddea3f3901dc618d1b5b39c04e6aa7c8181f4df2564f33a57bf635f48aca80c88bc4d716b1287595c5220812ffcae5b82dd5bd54fb4967f991ed2c31a3573,
    0x131b9c405f8540a20604ed93c24d67ff3668bfc2271f5c626cdfe17db3fb24d4a68f344af6b317466efe0a423083e49f343a0a28c42ba792fe96a79fb3e72ad0c,
    0x1fecf4d5190b0fc61862be6bd71d70cc8e724f33999bfcc5b235a27c3188d25eb4052bf4b6f461db9663c62c3edbad7a00d1a10144ec39c28d36b4789a2582e7f,
    0x143104d86560ebcfc0c45f45273db33a036e06b7e4c7019178fa0af2dd603f8441eddbae2c802e41a123202a8f62bff7aafdf5cc08526a7a474346c10a1d4cfac,
    0x1fac015404d4d3dab64131bcdfed6f668c004e4048b7b0f9806ebb0f621a01b2db48e26b484f7a21c0a4a46fb6aaf363a66b0de3225c4744b9615b5110d1d78e5,
)
_COMB32 = (
    0x10000000000000000000000000000000000000000000000000000000000000000,
    0x1e697d45825b636249f09f40407dca6f174b3d5867b8af212d50d152c699ca1017fe36b40af22af8921656b32262c71da1ab919365c65dfb63a5a9e22185a5943,
    0x1eb13461ceac089f1c42604fbe1627d40626db15419e26d9d0beada7a4c4f38404a5b506612a677a657880b3a18a2e902e9a521b074ca0141a84aa9397512218e,
    0x1690cde8df015159397b2a14f1291643488f80eeee54a05e35a8343ceeac55f800781b8291c6a220ac342967aa815c8575e52c4144103ecbcf9faed0927a43281,
    0x10455c08468b08bd737e02819085a92bfcde533864c8c7669c5f9a0ac223094b78a535f566ec73617f5622df4373713269e4c35874afdf43aaee9c75df7f82f2a,
    0x15b476dfd0e6cb18a427d49101366eb70debd8a4b7ea1070fc8b4aed1ea48dac906bada7ab77f82765050a949b6cdc279f9a4bf62876dc4440c0a6e2c9477b5d9,
    0x1239b90ea3dc31e7e1f150e68e322d1edad1744c4765bd780142d2a6626dbb8503e29864e8a2ec90829a751b1ae23c5d84d54606812d66f3b7c5c3e44278c340a,
    0x1140406ec783a05ec1b481b1b215c14d375be5d937b4e8cc46cc544a62b5debd4820f4dd949f72ff7dbcab759f8862ed4305dde6709776f8e78c416527a53322a,
    0x1cbe1feba92e40ce6fbc8044dfda45028cf5293d2f310bf7f90c76f8a7871265568f6b8542783dfeeeb5b06e70ce08ffefd75f3fa01876bd86a703f10e895df07,
    0x1971459828b0719e57db2636658954e7a10b838f8624c3b454305adddb38d4966d0b2f94d2f420109230f729f2250e927fc82ef0b6acea274e998ceea4396e4c1,
    0x17acb9fadcee75e442cf1f2438fe5131c69ab197d92ddcb2449997bcd2e407a5e961610004a866abac2d5cba4f234068757f2929e53d0b8764bd6b72623369fc9,
    0x169f891c5acd079cc743125f88bac4c4dfeef9341c51a6b4fe3de4ccb1cda5dea24eb9acca333bf5ba60d880f6f75aaeaf57f0c917aea685b254e839423d2d4c0,
    0x11c309a2b25bb1387a62f98b3a9fe9a068ca922ee097c184ea25bcd6fc9cf343de51f547c5972a107b422d1e7bd6f85147ed031a0e45c2258eee44b35702476b5,
    0x1f5c6fa49919776be0d11adef5f69a0441bd539338fe582dd3063175de057c27720b87b8aa2c4e503c504977708011828b00148833472c98e9295dbeb1967c459,
    0x13a2b03f03217257a52b520f0eb6a2a2405e4d0dcac0cd344a1011a270024b8891ed7d1b9332010b9a454c3fad83faa563876cba1102fad5f8c944e760fd59e11,
    0x14ab5b6b2b8753f81557d9f49461210fb41ef80e5d046ac04501e82885bc98cda15fee545c78dd9f6fc7d229ca0058c3bf330240db58d5a62f20fc2afdf1d043d,
)


def _add(X1, Y1, Z1, X2, Y2, Z2):
    # Complete addition, Renes-Costello-Batina 2016 algorithm 4 (a = -3).
    # Sums and differences are left unreduced (Python ints do not overflow);
    # every product is reduced, so operands stay a few bits over 256.
    p = P
    b = B
    t0 = X1 * X2 % p
    t1 = Y1 * Y2 % p
    t2 = Z1 * Z2 % p
    t3 = (X1 + Y1) * (X2 + Y2) % p
    t3 = t3 - t0 - t1
    t4 = (Y1 + Z1) * (Y2 + Z2) % p
    t4 = t4 - t1 - t2
    X3 = (X1 + Z1) * (X2 + Z2) % p
    Y3 = X3 - t0 - t2
    Z3 = b * t2 % p
    X3 = Y3 - Z3
    X3 = 3 * X3
    Z3 = t1 - X3
    X3 = t1 + X3
    Y3 = b * Y3 % p
    t2 = 3 * t2
    Y3 = Y3 - t2 - t0
    Y3 = 3 * Y3
    t0 = 3 * t0 - t2
    t1 = t4 * Y3 % p
    t2 = t0 * Y3 % p
    Y3 = (X3 * Z3 + t2) % p
    X3 = (t3 * X3 - t1) % p
    Z3 = (t4 * Z3 + t3 * t0) % p
    return X3, Y3, Z3


def _double(X, Y, Z):
    # Complete doubling, Renes-Costello-Batina 2016 algorithm 6 (a = -3).
    p = P
    t0 = X * X % p
    t1 = Y * Y % p
    t2 = Z * Z % p
    t3 = X * Y % p
    t3 = t3 + t3
    Z3 = X * Z % p
    Z3 = Z3 + Z3
    Y3 = B * t2 % p
    Y3 = Y3 - Z3
    Y3 = 3 * Y3
    X3 = t1 - Y3
    Y3 = t1 + Y3
    Y3 = X3 * Y3 % p
    X3 = X3 * t3 % p
    t2 = 3 * t2
    Z3 = B * Z3 % p
    Z3 = Z3 - t2 - t0
    Z3 = 3 * Z3
    t0 = 3 * t0 - t2
    t0 = t0 * Z3 % p
    Y3 = Y3 + t0
    t0 = Y * Z % p
    t0 = t0 + t0
    Z3 = t0 * Z3 % p
    X3 = X3 - Z3
    Z3 = 4 * t0 * t1 % p
    return X3, Y3, Z3


def _pow_mod(a, e, m):
    # Square-and-multiply for ports built without 3-argument pow
    # (MICROPY_PY_BUILTINS_POW3). e is public (m - 2), so are its branches.
    r = 1
    a %= m
    while e:
        if e & 1:
            r = r * a % m
        a = a * a % m
        e >>= 1
    return r


try:
    pow(3, 2, 5)
    _pow = pow
except (TypeError, NotImplementedError):
    _pow = _pow_mod


def _inv(a, m):
    # Fermat inversion (m is prime); the exponent is public, so the
    # square-and-multiply inside pow branches only on public bits.
    return _pow(a, m - 2, m)


def mul_base(k):
    """Return k*G as affine (x, y), or None for the point at infinity.

    k: int, 0 <= k < 2**256 (not reduced mod n, so n*G really is infinity).
    Constant shape: always 32 doublings, 64 full-table scans and 64 additions.
    """
    if not 0 <= k <= _M256:
        raise ValueError("scalar out of range: must be 0 <= k < 2**256")
    m64 = 0xFFFFFFFFFFFFFFFF
    k0 = k & m64
    k1 = (k >> 64) & m64
    k2 = (k >> 128) & m64
    k3 = k >> 192
    t0 = _COMB
    t1 = _COMB32
    m256 = _M256
    # Start at infinity; the complete formulas need no special first step.
    X, Y, Z = 0, 1, 0
    for i in range(31, -1, -1):
        X, Y, Z = _double(X, Y, Z)
        for tab, c in ((t1, i + 32), (t0, i)):
            # Bits c, c+64, c+128 and c+192 of k index the sub-comb's table.
            idx = ((k0 >> c) & 1) | (((k1 >> c) & 1) << 1) | (((k2 >> c) & 1) << 2) | (((k3 >> c) & 1) << 3)
            # Read every entry; the mask is -1 for the wanted one, 0 for the rest.
            sel = 0
            j = 0
            for e in tab:
                sel |= e & (((j ^ idx) - 1) >> 8)
                j += 1
            X, Y, Z = _add(X, Y, Z, sel & m256, (sel >> 256) & m256, sel >> 512)
    if Z % P == 0:
        return None
    zi = _inv(Z, P)
    return X * zi % P, Y * zi % P


def on_curve(x, y):
    """True when (x, y) is an affine point of P-256 (coordinates in [0, p))."""
    p = P
    if not (0 <= x < p and 0 <= y < p):
        return False
    return (y * y - (x * x * x - 3 * x + B)) % p == 0


def check_scalar(d):
    """Raise ValueError unless d is an int with 1 <= d <= n-1 (a valid private key)."""
    if not isinstance(d, int) or isinstance(d, bool):
        raise TypeError("private scalar must be an int, got %s" % type(d).__name__)
    if not 1 <= d < N:
        # The value is secret: say what is wrong, not what it is.
        raise ValueError("private scalar out of range: must be 1 <= d <= n-1")


def generate_key(urandom=None):
    """Return a new private key: an int d drawn uniformly from [1, n-1].

    urandom: callable(nbytes) -> bytes, default os.urandom (the hardware RNG
    on ESP32). Draws of 32 bytes outside [1, n-1] are rejected and redrawn
    (rejection sampling, no modular bias); after 16 rejections the RNG is
    taken to be broken and OSError is raised.
    """
    if urandom is None:
        urandom = os.urandom
    for _ in range(_KEY_TRIES):
        raw = urandom(32)
        if len(raw) != 32:
            raise OSError("urandom(32) returned %d bytes" % len(raw))
        d = int.from_bytes(raw, "big")
        if 1 <= d < N:
            return d
    raise OSError("random source gave no valid P-256 scalar in %d draws: check os.urandom" % _KEY_TRIES)


def public_key(d):
    """Return the public key (x, y) = d*G of private scalar d (checked)."""
    check_scalar(d)
    pt = mul_base(d)
    # A fault (bit flip, bad arithmetic) must not produce a key nobody can use.
    if pt is None or not on_curve(pt[0], pt[1]):
        raise RuntimeError("P-256 public key computation failed (point not on curve)")
    return pt


def _hmac(key, msg):
    # HMAC-SHA256 (RFC 2104) on hashlib.sha256: MicroPython has no hmac module.
    # key is at most 64 bytes here (32), so it is only zero-padded.
    k = key + bytes(64 - len(key))
    ipad = bytes([c ^ 0x36 for c in k])
    opad = bytes([c ^ 0x5C for c in k])
    inner = hashlib.sha256(ipad + msg).digest()
    return hashlib.sha256(opad + inner).digest()


def _digest_int(digest):
    if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
        raise ValueError("digest must be 32 bytes of SHA-256, got %r" % (type(digest).__name__,))
    return int.from_bytes(digest, "big")


def nonces(d, digest):
    """Yield RFC 6979 (section 3.2) nonces k for key d and a SHA-256 digest.

    The first value is the nonce of the signature; later ones are only needed
    when a candidate is rejected (k >= n, r == 0 or s == 0; each ~2**-32).
    """
    h = _digest_int(digest) % N  # bits2octets: qlen == hlen == 256
    x = d.to_bytes(32, "big")
    h = h.to_bytes(32, "big")
    v = b"\x01" * 32
    k = bytes(32)
    k = _hmac(k, v + b"\x00" + x + h)
    v = _hmac(k, v)
    k = _hmac(k, v + b"\x01" + x + h)
    v = _hmac(k, v)
    for _ in range(_NONCE_TRIES):
        v = _hmac(k, v)
        t = int.from_bytes(v, "big")
        if 1 <= t < N:
            yield t
        k = _hmac(k, v + b"\x00")
        v = _hmac(k, v)


def sign(d, digest):
    """Sign a 32-byte SHA-256 digest with private scalar d; return (r, s).

    The nonce is deterministic (RFC 6979), so signing needs no RNG and a weak
    RNG cannot leak the key through the nonce. s is not normalised to low-s
    (X.509 and TLS accept both; the RFC 6979 vectors use the raw value).
    """
    check_scalar(d)
    e = _digest_int(digest)
    n = N
    for k in nonces(d, digest):
        pt = mul_base(k)
        r = pt[0] % n
        if r == 0:
            continue
        s = _inv(k, n) * (e + r * d) % n
        if s != 0:
            return r, s
    raise RuntimeError("RFC 6979 produced no usable nonce in %d candidates" % _NONCE_TRIES)
