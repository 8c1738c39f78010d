"""A minimal blocking RFC 6455 WebSocket client for the Python tests (standard library only).

It does what the tests need and no more: the opening handshake (checking Sec-WebSocket-Accept),
reading the server's unmasked frames (text messages, with continuation frames joined; pings
answered; a close frame raised as ConnectionClosed), and sending masked text frames. No TLS and no
extensions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import urllib.parse
from typing import Any, Optional

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The server did not switch protocols; ``status`` is its HTTP status code."""

    def __init__(self, status: int, response: str):
        super().__init__(f"handshake refused with HTTP {status}: {response!r}")
        self.status = status


class ConnectionClosed(Exception):
    """The server sent a close frame (``code`` is None when the frame had no status code)."""

    def __init__(self, code: Optional[int], reason: str):
        super().__init__(f"closed by the server: {code} {reason!r}")
        self.code = code
        self.reason = reason


class WebSocket:
    """One client connection to ``ws://host:port/path?query``."""

    def __init__(self, url: str, timeout: float = 5.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ws":
            raise ValueError(f"only ws:// URLs are supported, not {url!r}")
        host, port = parts.hostname or "localhost", parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = b""
        self._handshake(f"{host}:{port}", target)

    def _handshake(self, host: str, target: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (
            f"GET {target} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self._sock.sendall(request.encode("ascii"))
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 101:
            self._sock.close()
            raise HandshakeError(status, head.decode("latin-1") + "\r\n\r\n" + self._buffer.decode("latin-1"))
        headers = {name.strip().lower(): value.strip() for name, _, value in (l.partition(":") for l in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode("ascii")).digest()).decode("ascii")
        if headers.get("sec-websocket-accept") != expected:
            self._sock.close()
            raise HandshakeError(status, "wrong Sec-WebSocket-Accept")

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the TCP connection")
        self._buffer += chunk

    def _read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _read_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read_exact(2)
        if second & 0x80:
            raise ValueError("the server sent a masked frame")
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        return bool(first & 0x80), first & 0x0F, self._read_exact(length)

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def recv_text(self, timeout: float = 5.0) -> str:
        """Return the next text message; raise ConnectionClosed on a close frame, TimeoutError if none."""
        self._sock.settimeout(timeout)
        message, opcode = b"", None
        while True:
            fin, op, payload = self._read_frame()
            if op == OP_PING:
                self._send_frame(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionClosed(code, payload[2:].decode("utf-8", "replace"))
            if op != OP_CONTINUATION:
                opcode = op
            message += payload
            if fin:
                if opcode != OP_TEXT:
                    raise ValueError(f"expected a text message, got opcode {opcode}")
                return message.decode("utf-8")

    def recv_json(self, timeout: float = 5.0) -> Any:
        """Return the next text message parsed as JSON."""
        return json.loads(self.recv_text(timeout))

    def send_text(self, text: str) -> None:
        """Send one masked text frame."""
        self._send_frame(OP_TEXT, text.encode("utf-8"))

    def send_json(self, value: Any) -> None:
        """Send a value as one JSON text frame."""
        self.send_text(json.dumps(value))

    def close(self) -> None:
        """Send a normal close (1000) and drop the TCP connection."""
        try:
            self._send_frame(OP_CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self._sock.close()
