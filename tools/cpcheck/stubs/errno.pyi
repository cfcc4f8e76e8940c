"""CircuitPython's errno (MicroPython's set)."""

EPERM: int
ENOENT: int
EIO: int
EBADF: int
EAGAIN: int
ENOMEM: int
EACCES: int
EEXIST: int
ENODEV: int
EISDIR: int
EINVAL: int
ENOSPC: int
EROFS: int
EOPNOTSUPP: int
EADDRINUSE: int
ECONNABORTED: int
ECONNRESET: int
ENOBUFS: int
ENOTCONN: int
ETIMEDOUT: int
ECONNREFUSED: int
EHOSTUNREACH: int
EALREADY: int
EINPROGRESS: int
errorcode: dict[int, str]
