"""A scripted MQTT 3.1.1 server on loopback, for hostile-broker tests (CPython only).

Unlike iotsim it misbehaves on purpose: it can refuse subscriptions (SUBACK
0x80), never acknowledge, or flood the client with stray PUBACKs once the
client has published, the way a broken or hostile broker would. One client
connection at a time, served by a thread; plain TCP on 127.0.0.1, a free port.
Host tests drive umqtt.simple on CPython against it, device tests the unix
port's MicroPython with the real umqtt.simple.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

# A stray PUBACK whose packet id bytes (0x01 0x01) are neither a PUBLISH
# (0x3X) nor a PINGRESP (0xD0) when umqtt reads them as packet types: umqtt
# reads only the first byte of a packet it does not expect.
STRAY_PUBACK = b"\x40\x02\x01\x01"


class RawBroker:
    """subscribe: "ack" (QoS 1), "refuse" (SUBACK 0x80) or "none".
    publish: "ack" (PUBACK), "none", or "flood" (PUBACK, then stray PUBACKs
    without pause until the client goes away or close()).
    on_publish, when set, answers every PUBLISH instead: given the packet's
    body, it returns the bytes to send back, or None to stay silent."""

    def __init__(
        self,
        subscribe: str = "ack",
        publish: str = "ack",
        on_publish: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.subscribe = subscribe
        self.publish = publish
        self.on_publish = on_publish
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.packets: list[int] = []  # types of the packets the client sent
        self.flooded = 0  # stray packets sent
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(30)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.settimeout(0.05)
        flooding = False
        burst = STRAY_PUBACK * 256
        with conn:
            while not self.stop.is_set():
                if flooding:
                    try:
                        conn.sendall(burst)
                        self.flooded += 256
                    except TimeoutError:
                        pass  # the client reads slower than we send: keep the pressure
                    except OSError:
                        return
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                self.received += data
                for kind, flags, body in self._packets():
                    self.packets.append(kind)
                    if kind == 0x10:
                        conn.sendall(b"\x20\x02\x00\x00")  # CONNACK accepted
                    elif kind == 0x80 and self.subscribe != "none":
                        code = b"\x80" if self.subscribe == "refuse" else b"\x01"
                        conn.sendall(b"\x90\x03" + body[:2] + code)
                    elif kind == 0xA0:
                        conn.sendall(b"\xb0\x02" + body[:2])  # UNSUBACK (umqtt 1.7+ waits for it)
                    elif kind == 0x30 and self.on_publish is not None:
                        reply = self.on_publish(body)
                        if reply:
                            conn.sendall(reply)
                    elif kind == 0x30 and flags & 6 and self.publish != "none":
                        topic_len = body[0] << 8 | body[1]
                        pid = body[2 + topic_len : 4 + topic_len]
                        conn.sendall(b"\x40\x02" + pid)  # PUBACK
                        flooding = self.publish == "flood"

    def _packets(self) -> Iterator[tuple[int, int, bytes]]:
        """Complete MQTT packets off the front of the buffer: (type, flags, body)."""
        while len(self.received) >= 2:
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(self.received):
                    return
                byte = self.received[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(self.received) < i + length:
                return
            first = self.received[0]
            body = bytes(self.received[i : i + length])
            del self.received[: i + length]
            yield first & 0xF0, first & 0x0F, body

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()
