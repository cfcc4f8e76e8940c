# CBOR (RFC 8949) codec for fleetprov: the dumps/loads interface of
# micropython-lib's cbor2, small enough for an ESP32 and strict about hostile input.
import struct

from runtime import const

# Containers and tags a document may nest; each level costs a Python frame.
MAX_DEPTH = const(16)


class _Decoder:
    def __init__(self, data):
        # A view, so slicing a caller's receive buffer copies only the item read.
        self.b = memoryview(data)
        self.p = 0
        self.n = len(self.b)

    def fail(self, what):
        raise ValueError("CBOR %s at byte %d of %d" % (what, self.p, self.n))

    def room(self, k):
        # Checked before anything is allocated; every element takes at least one byte.
        if k > self.n - self.p:
            self.fail("length %d runs past the end" % k)

    def byte(self):
        self.room(1)
        return self.b[self.p]

    def take(self, k):
        self.room(k)
        self.p += k
        return self.b[self.p - k : self.p]

    def head(self):
        ib = self.byte()
        self.p += 1
        ai = ib & 31
        v = ai
        if 23 < ai < 28:
            v = 0
            for c in self.take(1 << (ai - 24)):
                v = v << 8 | c
        elif ai == 31:
            v = None  # indefinite length, or break
        elif ai > 27:
            self.fail("reserved additional info %d" % ai)
        return ib >> 5, ai, v

    def brk(self):
        # Ends an indefinite-length item: True (and consumed) when the next byte is break.
        if self.byte() == 0xFF:
            self.p += 1
            return True
        return False

    def string(self, mt, v):
        s = self.take(v)
        if mt == 2:
            return bytes(s)
        try:
            return str(s, "utf-8")
        except UnicodeError:
            self.fail("text not UTF-8")

    def item(self, depth):
        mt, ai, v = self.head()
        if mt == 7:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if 22 <= ai <= 23:
                return None  # null; undefined has no Python value of its own
            if ai == 25:
                return _half(v)
            if ai == 26:
                return struct.unpack_from(">f", self.b, self.p - 4)[0]
            if ai == 27:
                return struct.unpack_from(">d", self.b, self.p - 8)[0]
            self.fail("stray break" if v is None else "unsupported simple value")
        if v is None and (mt < 2 or mt == 6):
            self.fail("indefinite length in major type %d" % mt)
        if mt == 0:
            return v
        if mt == 1:
            return -1 - v
        if mt < 4:
            if v is not None:
                return self.string(mt, v)
            # Indefinite: definite chunks of the same major type, then break.
            parts = []
            while not self.brk():
                cm, _, cv = self.head()
                if cm != mt or cv is None:
                    self.fail("bad chunk in indefinite string")
                parts.append(self.string(mt, cv))
            return (b"" if mt == 2 else "").join(parts)
        if depth >= MAX_DEPTH:
            self.fail("nesting deeper than %d" % MAX_DEPTH)
        depth += 1
        if mt == 6:
            return self.item(depth)  # tag: the number is dropped, the value kept
        out = [] if mt == 4 else {}
        if v is None:
            v = -1  # counts down forever: only break ends it
        else:
            self.room(v if mt == 4 else 2 * v)
        while v and not (v < 0 and self.brk()):
            x = self.item(depth)
            if mt == 4:
                out.append(x)
            else:
                # Duplicate keys: the last one wins, as in cbor2 and a JSON object.
                try:
                    out[x] = self.item(depth)
                except TypeError:
                    self.fail("unhashable map key %s" % type(x).__name__)
            v -= 1
        return out


def _half(h):
    e = (h >> 10) & 31
    m = h & 1023
    if e == 31:
        f = float("nan") if m else float("inf")
    else:
        # Subnormal when e == 0; otherwise the implicit leading 1 is bit 10.
        f = (m + 1024 if e else m) * 2.0 ** ((e or 1) - 25)
    return -f if h & 0x8000 else f


def loads(data):
    """Decode the first CBOR item of data and return it.

    data: bytes, bytearray or memoryview; it is read in place (only decoded
    strings are copied) and bytes after the first item are ignored.
    Returns int, bytes, str, list, dict, bool, None or float. Tags are
    dropped and their value kept; undefined decodes as None; a duplicate map
    key keeps its last value. Containers and tags nest at most MAX_DEPTH (16)
    deep. Raises ValueError for any malformed, truncated or hostile input,
    TypeError when data is not a buffer.
    """
    return _Decoder(data).item(0)


def _head(out, mt, v):
    # Shortest form, as cbor2: the value itself below 24, else 1, 2, 4 or 8 bytes.
    if v < 24:
        out.append(mt | v)
        return
    ai = 24
    n = 1
    while v >> (8 * n):
        ai += 1
        n *= 2
    if ai > 27:
        raise ValueError("CBOR cannot encode integer beyond 64 bits (use -2**64 .. 2**64-1)")
    out.append(mt | ai)
    out.extend(v.to_bytes(n, "big"))


def _enc(out, x, depth):
    if x is None:
        out.append(0xF6)
    elif x is True:
        out.append(0xF5)
    elif x is False:
        out.append(0xF4)
    elif isinstance(x, int):
        if x < 0:
            _head(out, 0x20, -1 - x)
        else:
            _head(out, 0, x)
    elif isinstance(x, float):
        if x - x:
            # NaN and infinities as half floats, exactly as cbor2 writes them.
            out.extend(b"\xf9\x7e\x00" if x != x else b"\xf9\x7c\x00" if x > 0 else b"\xf9\xfc\x00")
        else:
            out.append(0xFB)
            out.extend(struct.pack(">d", x))
    elif isinstance(x, str):
        x = x.encode("utf-8")
        _head(out, 0x60, len(x))
        out.extend(x)
    elif isinstance(x, (bytes, bytearray, memoryview)):
        _head(out, 0x40, len(x))
        out.extend(x)
    else:
        if depth >= MAX_DEPTH:
            raise ValueError("CBOR cannot encode nesting deeper than %d" % MAX_DEPTH)
        depth += 1
        if isinstance(x, (list, tuple)):
            _head(out, 0x80, len(x))
            for i in x:
                _enc(out, i, depth)
        elif isinstance(x, dict):
            _head(out, 0xA0, len(x))
            for k in x:
                _enc(out, k, depth)
                _enc(out, x[k], depth)
        else:
            raise TypeError("CBOR cannot encode type %s" % type(x).__name__)


def dumps(obj):
    """Encode obj as CBOR and return bytes, byte for byte as cbor2.dumps.

    obj: dict, list, tuple, str, bytes, bytearray, memoryview, int
    (-2**64 .. 2**64-1), bool, None or float (finite floats as doubles; NaN
    and infinities as half floats), nested at most MAX_DEPTH (16) deep.
    Raises TypeError for any other type, ValueError for an integer out of
    range or deeper nesting.
    """
    out = bytearray()
    _enc(out, obj, 0)
    return bytes(out)
