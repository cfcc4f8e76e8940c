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


def sha256(data):
    """hashlib.sha256(data); CircuitPython's hashlib has only new(name, data)."""
    make = getattr(hashlib, "sha256", None)
    if make is not None:
        return make(data)
    return getattr(hashlib, "new")("sha256", data)  # not in MicroPython's hashlib


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
    0x14FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F56B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x1BFF44AE8F5DBA80D6F4AD4BCB3DF188B34B1A65050FE82F5E41124545F462EE70FA822BC2811AAA58492592E326E25DE29493BAAAD651F7E90E75CB48E14DB63,
    0x172AAC7E0D09B46447F1DDB25FF1E3C6F5BB1EEADA9D806A5AA54A291C08127A0300A4BBC89D6726FB257C0DE95E02789E96C98FD0D35F1FA93391CE2097992AF,
    0x12D4825AB834131EEE12E9D953A4AAFF73D349B95A7FAE5000C7E33C972E25B32447D739BEEDB5E67FB982FD588C6766EFC35FF7DC297EAC357C84FC9D789BD85,
    0x1611E9FC37DBB2C9BC1EE9807022C219C23183B0895CA1740196035A77376D8A8EF9519328A9C72FFDDC6068BB91DFC60EF7FBD2B1A0A11B713949C932A1D367F,
    0x1157164848AECB8510AFA40018D9D50E59FB3D576DBDEFBE144FFE216348A964C550663797B51F5D87DEA6482E11238BF2936DF5EC6C9BC36CAE2B1920B57F4BC,
    0x1EAFD72EBDBECC17B0990E6A158006CEE85F22CFE2844B645CAC917E2731A3479EB5D7745B21141EAA2E8F483F43E43917CCD84E70D715F26E48ECAFFFC5CDE01,
    0x1674F84749B0B881666B8BABD2D27ECDF824A920C2284059BF2BAB833C357F5F4A6D39677A78492762736FF8344315FC596439591A3C6B94A6CF20FFB313728BE,
    0x142B99082DE8306631EC0057206947281FB9AE16F3B9122A5A4C36165B824BBB04E769E7672C9DDAD31855F7DB8C7FEDB74E02F080203A56B2DF48C04677C8A3E,
    0x1B6CB3F5D7B72C321DE53142C12309DEF6ACE570EBDE08D4F9C62B9121FE0D97678878EF61C6CE04D7FDC1CA008A1C478D1F89E799C0CE1316EF95150DDA868B9,
    0x1DD5DDEA3F3901DC618D1B5B39C04E6AA7C8181F4DF2564F33A57BF635F48ACA80C88BC4D716B1287595C5220812FFCAE5B82DD5BD54FB4967F991ED2C31A3573,
    0x131B9C405F8540A20604ED93C24D67FF3668BFC2271F5C626CDFE17DB3FB24D4A68F344AF6B317466EFE0A423083E49F343A0A28C42BA792FE96A79FB3E72AD0C,
    0x1FECF4D5190B0FC61862BE6BD71D70CC8E724F33999BFCC5B235A27C3188D25EB4052BF4B6F461DB9663C62C3EDBAD7A00D1A10144EC39C28D36B4789A2582E7F,
    0x143104D86560EBCFC0C45F45273DB33A036E06B7E4C7019178FA0AF2DD603F8441EDDBAE2C802E41A123202A8F62BFF7AAFDF5CC08526A7A474346C10A1D4CFAC,
    0x1FAC015404D4D3DAB64131BCDFED6F668C004E4048B7B0F9806EBB0F621A01B2DB48E26B484F7A21C0A4A46FB6AAF363A66B0DE3225C4744B9615B5110D1D78E5,
)
_COMB32 = (
    0x10000000000000000000000000000000000000000000000000000000000000000,
    0x1E697D45825B636249F09F40407DCA6F174B3D5867B8AF212D50D152C699CA1017FE36B40AF22AF8921656B32262C71DA1AB919365C65DFB63A5A9E22185A5943,
    0x1EB13461CEAC089F1C42604FBE1627D40626DB15419E26D9D0BEADA7A4C4F38404A5B506612A677A657880B3A18A2E902E9A521B074CA0141A84AA9397512218E,
    0x1690CDE8DF015159397B2A14F1291643488F80EEEE54A05E35A8343CEEAC55F800781B8291C6A220AC342967AA815C8575E52C4144103ECBCF9FAED0927A43281,
    0x10455C08468B08BD737E02819085A92BFCDE533864C8C7669C5F9A0AC223094B78A535F566EC73617F5622DF4373713269E4C35874AFDF43AAEE9C75DF7F82F2A,
    0x15B476DFD0E6CB18A427D49101366EB70DEBD8A4B7EA1070FC8B4AED1EA48DAC906BADA7AB77F82765050A949B6CDC279F9A4BF62876DC4440C0A6E2C9477B5D9,
    0x1239B90EA3DC31E7E1F150E68E322D1EDAD1744C4765BD780142D2A6626DBB8503E29864E8A2EC90829A751B1AE23C5D84D54606812D66F3B7C5C3E44278C340A,
    0x1140406EC783A05EC1B481B1B215C14D375BE5D937B4E8CC46CC544A62B5DEBD4820F4DD949F72FF7DBCAB759F8862ED4305DDE6709776F8E78C416527A53322A,
    0x1CBE1FEBA92E40CE6FBC8044DFDA45028CF5293D2F310BF7F90C76F8A7871265568F6B8542783DFEEEB5B06E70CE08FFEFD75F3FA01876BD86A703F10E895DF07,
    0x1971459828B0719E57DB2636658954E7A10B838F8624C3B454305ADDDB38D4966D0B2F94D2F420109230F729F2250E927FC82EF0B6ACEA274E998CEEA4396E4C1,
    0x17ACB9FADCEE75E442CF1F2438FE5131C69AB197D92DDCB2449997BCD2E407A5E961610004A866ABAC2D5CBA4F234068757F2929E53D0B8764BD6B72623369FC9,
    0x169F891C5ACD079CC743125F88BAC4C4DFEEF9341C51A6B4FE3DE4CCB1CDA5DEA24EB9ACCA333BF5BA60D880F6F75AAEAF57F0C917AEA685B254E839423D2D4C0,
    0x11C309A2B25BB1387A62F98B3A9FE9A068CA922EE097C184EA25BCD6FC9CF343DE51F547C5972A107B422D1E7BD6F85147ED031A0E45C2258EEE44B35702476B5,
    0x1F5C6FA49919776BE0D11ADEF5F69A0441BD539338FE582DD3063175DE057C27720B87B8AA2C4E503C504977708011828B00148833472C98E9295DBEB1967C459,
    0x13A2B03F03217257A52B520F0EB6A2A2405E4D0DCAC0CD344A1011A270024B8891ED7D1B9332010B9A454C3FAD83FAA563876CBA1102FAD5F8C944E760FD59E11,
    0x14AB5B6B2B8753F81557D9F49461210FB41EF80E5D046AC04501E82885BC98CDA15FEE545C78DD9F6FC7D229CA0058C3BF330240DB58D5A62F20FC2AFDF1D043D,
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
    on ESP32, truly random only while Wi-Fi or Bluetooth is on: call this
    after the radio is active). Draws of 32 bytes outside [1, n-1] are rejected and redrawn
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
    inner = sha256(ipad + msg).digest()
    return sha256(opad + inner).digest()


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
