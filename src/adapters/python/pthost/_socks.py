"""The SOCKS5 client side of pthost's front end (spec/ipc.md §5, spec/adapters.md §2.2).

One write: greeting offering ``09`` and ``80`` (same block format, so the
block can follow without waiting for the choice, §5.3), the settings block,
the CONNECT request. Then the method choice and the reply are read, never a
byte further: what follows belongs to the application.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct

from .errors import SocksError, SocksMethodRefused, socks_error

__all__ = ["build_handshake", "HandshakeReader", "format_destination"]

GREETING = b"\x05\x02\x09\x80"
METHODS = (0x09, 0x80)
# Method choice (2) + the shortest reply (10): every answer pthost gives is at least this long.
FIRST_READ = 12


def _encode_destination(host: str, port: int) -> bytes:
    """``ATYP DST.ADDR DST.PORT`` (spec/ipc.md §5.5); names are sent unresolved (ATYP 03)."""
    if not 0 <= port <= 0xFFFF:
        raise OverflowError("port must be 0-65535")
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        name = host.encode("idna") if not host.isascii() else host.encode("ascii")
        if not 1 <= len(name) <= 255:
            raise ValueError(f"host name length must be 1-255 bytes: {host!r}")
        return b"\x03" + bytes([len(name)]) + name + struct.pack("!H", port)
    if ip.version == 4:
        return b"\x01" + ip.packed + struct.pack("!H", port)
    return b"\x04" + ip.packed + struct.pack("!H", port)


def format_destination(address) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def build_handshake(address, settings: dict | None) -> bytes:
    """Greeting + settings block + CONNECT request, to be sent in one write."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError("address must be a (host, port) tuple")
    host, port = address[0], address[1]
    if isinstance(host, bytes):
        host = host.decode("ascii")
    block = b""
    if settings:
        block = json.dumps(settings, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return (GREETING + struct.pack("!I", len(block)) + block
            + b"\x05\x01\x00" + _encode_destination(str(host), int(port)))


class HandshakeReader:
    """Parses pthost's answer: ``05 <method>`` then ``05 REP 00 ATYP BND.ADDR BND.PORT``.

    ``need()`` is how many more bytes to read (never past the reply);
    ``feed()`` takes them; ``result()`` raises the mapped error or returns
    ``BND`` as ``(host, port)``.
    """

    __slots__ = ("buf", "transport", "destination")

    def __init__(self, transport: str, destination: str):
        self.buf = bytearray()
        self.transport = transport
        self.destination = destination

    def need(self) -> int:
        b = self.buf
        if len(b) >= 2 and (b[0] != 0x05 or b[1] not in METHODS):
            return 0
        if len(b) < FIRST_READ:
            return FIRST_READ - len(b)
        if b[3] != 0x00:
            return 0  # failure replies are always 10 bytes
        atyp = b[5]
        total = {0x01: 12, 0x04: 24}.get(atyp)
        if total is None:
            total = 2 + 4 + 1 + b[6] + 2 if atyp == 0x03 and len(b) > 6 else 12
        return max(0, total - len(b))

    def feed(self, data: bytes) -> None:
        if not data:
            raise self._eof()
        self.buf += data

    def _eof(self) -> SocksError:
        b = self.buf
        if len(b) >= 2 and b[1] == 0xFF:
            return SocksMethodRefused(f"{self.transport}: pthost refused the SOCKS methods 09/80", None)
        return socks_error(0x01, self.transport, self.destination)

    def result(self) -> tuple[str, int]:
        b = self.buf
        if b[0] != 0x05 or b[1] not in METHODS:
            if b[1] == 0xFF:
                raise SocksMethodRefused(f"{self.transport}: pthost refused the SOCKS methods 09/80", None)
            raise SocksError(f"{self.transport}: not a SOCKS5 method choice: {bytes(b[:2]).hex()}", None)
        if b[2] != 0x05:
            raise SocksError(f"{self.transport}: not a SOCKS5 reply: {bytes(b[2:4]).hex()}", None)
        if b[3] != 0x00:
            raise socks_error(b[3], self.transport, self.destination)
        atyp = b[5]
        if atyp == 0x01:
            return socket.inet_ntop(socket.AF_INET, bytes(b[6:10])), struct.unpack_from("!H", b, 10)[0]
        if atyp == 0x04:
            return socket.inet_ntop(socket.AF_INET6, bytes(b[6:22])), struct.unpack_from("!H", b, 22)[0]
        n = b[6]
        return bytes(b[7:7 + n]).decode("ascii", "replace"), struct.unpack_from("!H", b, 7 + n)[0]
