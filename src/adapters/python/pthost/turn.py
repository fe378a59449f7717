"""An RFC 5766 TURN client for pthost's TURN front end (spec/turn.md §2–§4, spec/adapters.md §2.8, §3.5).

``TurnCore`` holds what both drivers share: STUN messages (RFC 5389 §6,
§15), long-term credentials (§10.2), the allocation's channels. The asyncio
driver (:class:`TurnDatagramTransport`, from ``create_datagram_endpoint``) and
the blocking :class:`TurnSocket` (``makeSocket(AF_INET, SOCK_DGRAM)``) move the
bytes. Over UDP, ChannelData is sent unpadded (RFC 5766 §11.5).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hashlib
import hmac
import ipaddress
import os
import select
import socket
import struct
import time
import zlib

from .errors import PtHostDiedError, PtHostError

__all__ = ["TurnError", "TurnCore", "TurnDatagramTransport", "TurnSocket", "open_datagram_endpoint"]

_SocketBase = socket.socket

MAGIC = 0x2112A442
MAGIC_BYTES = struct.pack("!I", MAGIC)

# Methods (RFC 5389 §18.1, RFC 5766 §13)
BINDING, ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION, CHANNEL_BIND = 0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009
# Classes
REQUEST, INDICATION, SUCCESS, ERROR = 0x000, 0x010, 0x100, 0x110
# Attributes
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
CHANNEL_NUMBER, LIFETIME, XOR_PEER_ADDRESS, DATA_ATTR = 0x000C, 0x000D, 0x0012, 0x0013
REALM, NONCE, XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0016, 0x0019
XOR_MAPPED_ADDRESS, FINGERPRINT = 0x0020, 0x8028

LIFETIME_REQUESTED = 600          # spec/turn.md §3.4 (default and minimum)
CHANNEL_REFRESH = 240.0           # < the 300 s permission a ChannelBind refreshes (spec/turn.md §3.4)
RTO, MAX_SENDS = 0.5, 7           # RFC 5389 §7.2.1: Rc = 7, Rm = 16
LAST_WAIT = 16 * RTO
MAX_PAYLOAD = 65527               # spec/turn.md §5.2 (IPv4 peer)
PENDING_PER_PEER = 256            # datagrams kept while a peer's channel is being bound
SEND_QUEUE = 4096                 # datagrams kept while the socket towards pthost is full


def _type(method: int, cls: int) -> int:
    return ((method & 0xF80) << 2) | ((method & 0x070) << 1) | (method & 0x00F) | cls


def _split_type(t: int) -> tuple[int, int]:
    return (t & 0x00F) | ((t >> 1) & 0x070) | ((t >> 2) & 0xF80), t & 0x110


class TurnError(OSError):
    """A TURN error response (``code`` is the STUN error code, spec/turn.md §4)."""

    def __init__(self, code: int, reason: str, method: str):
        super().__init__(errno.EACCES if code in (401, 403) else errno.EIO, f"TURN {method}: {code} {reason}")
        self.code = code
        self.reason = reason


class TurnForbidden(TurnError, PermissionError):
    """403: the server process refused the peer (its ``allow`` list, spec/turn.md §6.1)."""


def _error(code: int, reason: str, method: str) -> TurnError:
    return (TurnForbidden if code == 403 else TurnError)(code, reason, method)


class StunMessage:
    __slots__ = ("method", "cls", "tid", "attrs", "raw", "mi_at")

    def __init__(self, method, cls, tid, attrs, raw, mi_at):
        self.method, self.cls, self.tid, self.attrs, self.raw, self.mi_at = method, cls, tid, attrs, raw, mi_at

    def error(self) -> tuple[int, str]:
        v = self.attrs.get(ERROR_CODE)
        if v is None or len(v) < 4:
            return 0, "error response without ERROR-CODE"
        return (v[2] & 7) * 100 + v[3], v[4:].decode("utf-8", "replace")


def parse(data) -> StunMessage | None:
    """A STUN message (RFC 5389 §6) or ``None`` when ``data`` is not one."""
    if len(data) < 20 or data[0] & 0xC0:
        return None
    t, length, magic = struct.unpack_from("!HHI", data)
    if magic != MAGIC or length % 4 or 20 + length != len(data):
        return None
    method, cls = _split_type(t)
    attrs: dict[int, bytes] = {}
    pos, end, mi_at = 20, 20 + length, None
    while pos + 4 <= end:
        at, al = struct.unpack_from("!HH", data, pos)
        if pos + 4 + al > end:
            return None
        if mi_at is None or at == FINGERPRINT:
            attrs.setdefault(at, bytes(data[pos + 4:pos + 4 + al]))
        if at == MESSAGE_INTEGRITY:
            mi_at = pos
        pos += 4 + al + (-al % 4)
    return StunMessage(method, cls, bytes(data[8:20]), attrs, bytes(data), mi_at)


def build(msg_type: int, tid: bytes, attrs, key: bytes | None = None, fingerprint: bool = True) -> bytes:
    """A STUN message with MESSAGE-INTEGRITY (when ``key``) and FINGERPRINT (RFC 5389 §15.4, §15.5)."""
    body = bytearray()
    for t, v in attrs:
        body += struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)
    if key is not None:
        head = struct.pack("!HHI", msg_type, len(body) + 24, MAGIC) + tid
        body += struct.pack("!HH", MESSAGE_INTEGRITY, 20) + hmac.new(key, head + body, hashlib.sha1).digest()
    if fingerprint:
        head = struct.pack("!HHI", msg_type, len(body) + 8, MAGIC) + tid
        body += struct.pack("!HHI", FINGERPRINT, 4, (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF)
    return struct.pack("!HHI", msg_type, len(body), MAGIC) + tid + bytes(body)


def integrity_ok(msg: StunMessage, key: bytes) -> bool:
    if msg.mi_at is None:
        return False
    raw = bytearray(msg.raw[:msg.mi_at])
    struct.pack_into("!H", raw, 2, msg.mi_at - 20 + 24)
    mac = hmac.new(key, bytes(raw), hashlib.sha1).digest()
    return hmac.compare_digest(mac, msg.attrs.get(MESSAGE_INTEGRITY, b""))


def encode_xor_address(peer: tuple[str, int], tid: bytes) -> bytes:
    ip = ipaddress.ip_address(peer[0])
    port = peer[1] ^ (MAGIC >> 16)
    if ip.version == 4:
        return struct.pack("!BBH", 0, 1, port) + bytes(a ^ b for a, b in zip(ip.packed, MAGIC_BYTES))
    return struct.pack("!BBH", 0, 2, port) + bytes(a ^ b for a, b in zip(ip.packed, MAGIC_BYTES + tid))


def decode_xor_address(v: bytes, tid: bytes) -> tuple[str, int] | None:
    if len(v) < 8:
        return None
    port = struct.unpack_from("!H", v, 2)[0] ^ (MAGIC >> 16)
    if v[1] == 1:
        return socket.inet_ntop(socket.AF_INET, bytes(a ^ b for a, b in zip(v[4:8], MAGIC_BYTES))), port
    if v[1] == 2 and len(v) >= 20:
        ip = ipaddress.ip_address(bytes(a ^ b for a, b in zip(v[4:20], MAGIC_BYTES + tid)))
        return (str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ip)), port
    return None


def normalize_peer(addr) -> tuple[str, int]:
    """``(ip, port)`` with the IP in canonical text; peers must be IP literals."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        raise TypeError("a peer address is an (ip, port) tuple")
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    except ValueError:
        raise ValueError(f"TURN peers are IP addresses, not names: {addr[0]!r}") from None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    port = int(addr[1])
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"peer port must be 1-65535: {port}")
    return str(ip), port


class TurnCore:
    """Credentials, nonce and channels of one allocation; builds requests, reads answers."""

    def __init__(self, realm: str, username: str, password: str):
        self.username = username.encode("utf-8")
        self.password = password
        self.realm = realm.encode("utf-8") if realm else None
        self.nonce: bytes | None = None
        self.key: bytes | None = None
        self.relayed: tuple[str, int] | None = None
        self.mapped: tuple[str, int] | None = None
        self.lifetime = LIFETIME_REQUESTED
        self.channel_of: dict[tuple[str, int], int] = {}
        self.peer_of: dict[int, tuple[str, int]] = {}
        self.bound_at: dict[tuple[str, int], float] = {}
        self._next_channel = 0x4000

    def request(self, method: int, attrs) -> tuple[bytes, bytes, bool]:
        """``(tid, message, authenticated)``; ``attrs(tid)`` gives the method's attributes."""
        tid = os.urandom(12)
        a = list(attrs(tid))
        key = None
        if self.nonce is not None and method != BINDING:
            a += [(USERNAME, self.username), (REALM, self.realm or b""), (NONCE, self.nonce)]
            key = self.key
        return tid, build(_type(method, REQUEST), tid, a, key), key is not None

    def challenge(self, msg: StunMessage, authenticated: bool) -> bool:
        """401/438 with REALM/NONCE (RFC 5389 §10.2.3): take them; True when a retry can succeed."""
        code, _ = msg.error()
        realm, nonce = msg.attrs.get(REALM), msg.attrs.get(NONCE)
        if code not in (401, 438) or nonce is None:
            return False
        if code == 401 and authenticated and nonce == self.nonce:
            return False  # our credentials were refused
        if realm is not None:
            self.realm = realm
        self.nonce = nonce
        self.key = hashlib.md5(self.username + b":" + (self.realm or b"") + b":"
                               + self.password.encode("utf-8")).digest()
        return True

    def accept(self, msg: StunMessage, method_name: str) -> StunMessage:
        """A success response, its integrity checked when it carries one."""
        if msg.cls == ERROR:
            raise _error(*msg.error(), method_name)
        if self.key is not None and MESSAGE_INTEGRITY in msg.attrs and not integrity_ok(msg, self.key):
            raise TurnError(0, "response failed its MESSAGE-INTEGRITY check", method_name)
        return msg

    def allocated(self, msg: StunMessage) -> None:
        self.relayed = decode_xor_address(msg.attrs.get(XOR_RELAYED_ADDRESS, b""), msg.tid)
        self.mapped = decode_xor_address(msg.attrs.get(XOR_MAPPED_ADDRESS, b""), msg.tid)
        self.lifetime = self._lifetime(msg)

    @staticmethod
    def _lifetime(msg: StunMessage) -> int:
        v = msg.attrs.get(LIFETIME)
        return struct.unpack("!I", v)[0] if v and len(v) == 4 else LIFETIME_REQUESTED

    def channel_for(self, peer: tuple[str, int]) -> int:
        ch = self.channel_of.get(peer)
        if ch is None:
            if self._next_channel > 0x7FFF:
                raise OSError(errno.ENOBUFS, "no TURN channel numbers left")
            ch = self._next_channel
            self._next_channel += 1
        return ch

    def bound(self, peer: tuple[str, int], ch: int) -> None:
        self.channel_of[peer] = ch
        self.peer_of[ch] = peer
        self.bound_at[peer] = time.monotonic()

    @staticmethod
    def allocate_attrs(tid):
        return [(REQUESTED_TRANSPORT, b"\x11\0\0\0"), (LIFETIME, struct.pack("!I", LIFETIME_REQUESTED))]

    @staticmethod
    def refresh_attrs(lifetime):
        return lambda tid: [(LIFETIME, struct.pack("!I", lifetime))]

    @staticmethod
    def bind_attrs(peer, ch):
        return lambda tid: [(CHANNEL_NUMBER, struct.pack("!HH", ch, 0)), (XOR_PEER_ADDRESS, encode_xor_address(peer, tid))]

    def incoming(self, data) -> tuple[bytes, tuple[str, int]] | StunMessage | None:
        """A received datagram: ``(payload, peer)`` for data, a message for a response, else None."""
        if len(data) >= 4 and data[0] & 0xC0 == 0x40:
            ch, n = struct.unpack_from("!HH", data)
            peer = self.peer_of.get(ch)
            if peer is None or 4 + n > len(data):
                return None
            return bytes(data[4:4 + n]), peer
        msg = parse(data)
        if msg is None:
            return None
        if msg.cls == INDICATION:
            if msg.method == DATA:
                peer = decode_xor_address(msg.attrs.get(XOR_PEER_ADDRESS, b""), msg.tid)
                payload = msg.attrs.get(DATA_ATTR)
                if peer is not None and payload is not None:
                    return payload, peer
            return None
        return msg


_METHOD_NAMES = {ALLOCATE: "Allocate", REFRESH: "Refresh", CHANNEL_BIND: "ChannelBind",
                 CREATE_PERMISSION: "CreatePermission"}


def _credentials(transport):
    creds = transport._factory.turn_credentials
    turn = transport.turn_address
    if turn is None or creds is None:
        raise OSError(errno.EPROTONOSUPPORT,
                      f"transport {transport.getTransportName()} has no TURN listener (no 'turn' key, "
                      "or the transport cannot carry UDP: spec/turn.md §5.1)")
    return turn, creds


def _udp_socket(turn: tuple[str, int], local_addr=None) -> _SocketBase:
    family = socket.AF_INET6 if ":" in turn[0] else socket.AF_INET
    sock = _SocketBase(family, socket.SOCK_DGRAM)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        if local_addr is not None:
            sock.bind(local_addr)
        sock.connect(turn)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------- asyncio


class TurnDatagramTransport(asyncio.DatagramTransport):
    """The application's ``DatagramTransport``: datagrams to and from peers through a TURN
    allocation on pthost (ChannelData on the wire, spec/turn.md §3.4)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: _SocketBase, core: TurnCore, process,
                 remote: tuple[str, int] | None):
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._core = core
        self._process = process
        self._remote = remote
        self._protocol: asyncio.DatagramProtocol | None = None
        self._closing = False
        self._waiting: dict[bytes, asyncio.Future] = {}
        self._pending: dict[tuple[str, int], collections.deque] = {}
        self._wqueue: collections.deque = collections.deque()
        self._rbuf = bytearray(65536 + 4)
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._channel_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._exit_callback = None
        self.dropped = 0
        loop.add_reader(sock.fileno(), self._read_ready)

    # -------------------------------------------------------------- transactions

    async def _transact(self, method: int, attrs) -> StunMessage:
        name = _METHOD_NAMES.get(method, hex(method))
        for _ in range(4):
            tid, data, authed = self._core.request(method, attrs)
            msg = await self._exchange(tid, data)
            if msg.cls == ERROR and self._core.challenge(msg, authed):
                continue
            return self._core.accept(msg, name)
        raise TurnError(0, "too many authentication challenges", name)

    async def _exchange(self, tid: bytes, data: bytes) -> StunMessage:
        fut = self._loop.create_future()
        self._waiting[tid] = fut
        try:
            rto = RTO
            for sends in range(MAX_SENDS):
                self._send_raw((data,))
                wait = rto if sends < MAX_SENDS - 1 else LAST_WAIT
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
                except asyncio.TimeoutError:
                    if self._closing:
                        break
                    rto *= 2
            raise TimeoutError("the TURN server did not answer")
        finally:
            self._waiting.pop(tid, None)
            if not fut.done():
                fut.cancel()

    async def _allocate(self) -> None:
        msg = await self._transact(ALLOCATE, TurnCore.allocate_attrs)
        self._core.allocated(msg)
        self._schedule_refresh()
        self._channel_handle = self._loop.call_later(CHANNEL_REFRESH / 4, self._refresh_channels)

    def _schedule_refresh(self) -> None:
        lifetime = self._core.lifetime
        self._refresh_handle = self._loop.call_later(max(lifetime - 60, lifetime / 2),
                                                     lambda: self._spawn(self._refresh()))

    async def _refresh(self) -> None:
        try:
            msg = await self._transact(REFRESH, TurnCore.refresh_attrs(LIFETIME_REQUESTED))
            self._core.lifetime = TurnCore._lifetime(msg)
            self._schedule_refresh()
        except OSError as e:
            self._fatal(e)

    def _refresh_channels(self) -> None:
        now = time.monotonic()
        for peer, at in list(self._core.bound_at.items()):
            if now - at >= CHANNEL_REFRESH:
                self._spawn(self._bind(peer))
        if not self._closing:
            self._channel_handle = self._loop.call_later(CHANNEL_REFRESH / 4, self._refresh_channels)

    async def _bind(self, peer: tuple[str, int]) -> None:
        ch = self._core.channel_for(peer)
        await self._transact(CHANNEL_BIND, TurnCore.bind_attrs(peer, ch))
        self._core.bound(peer, ch)

    async def _bind_pending(self, peer: tuple[str, int]) -> None:
        try:
            await self._bind(peer)
        except OSError as e:
            self._pending.pop(peer, None)
            if self._protocol is not None and not self._closing:
                self._protocol.error_received(e)
            return
        queue = self._pending.pop(peer, ())
        ch = self._core.channel_of[peer]
        for data in queue:
            self._send_raw((struct.pack("!HH", ch, len(data)), data))

    def _spawn(self, coro) -> None:
        if self._closing:
            coro.close()
            return
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- socket I/O

    def _send_raw(self, parts) -> None:
        if self._wqueue:
            if len(self._wqueue) < SEND_QUEUE:
                self._wqueue.append(b"".join(parts))
            else:
                self.dropped += 1
            return
        try:
            self._sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            self._wqueue.append(b"".join(parts))
            self._loop.add_writer(self._sock.fileno(), self._write_ready)
        except OSError as e:
            self._socket_error(e)

    def _write_ready(self) -> None:
        while self._wqueue:
            try:
                self._sock.send(self._wqueue[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._wqueue.clear()
                self._socket_error(e)
                break
            self._wqueue.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def _read_ready(self) -> None:
        core, buf = self._core, self._rbuf
        for _ in range(64):
            try:
                n = self._sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._socket_error(e)
                return
            got = core.incoming(memoryview(buf)[:n])
            if got is None:
                continue
            if isinstance(got, tuple):
                if self._protocol is not None:
                    self._protocol.datagram_received(*got)
                continue
            fut = self._waiting.get(got.tid)
            if fut is not None and not fut.done():
                fut.set_result(got)

    def _socket_error(self, exc: OSError) -> None:
        if self._process.exiting():
            self._fatal(PtHostDiedError("pthost exited: the TURN allocation is gone"))
        elif self._protocol is not None and not self._closing:
            self._protocol.error_received(exc)

    def _on_pthost_exit(self, error) -> None:
        if not self._closing:
            self._fatal(PtHostDiedError("pthost exited: the TURN allocation is gone"))

    def _fatal(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._close(exc, refresh_zero=False)

    # ------------------------------------------------------- DatagramTransport

    def sendto(self, data, addr=None) -> None:
        if self._closing:
            return
        if addr is None:
            if self._remote is None:
                raise ValueError("no remote_addr: sendto needs an address")
            peer = self._remote
        else:
            peer = normalize_peer(addr)
            if self._remote is not None and peer != self._remote:
                raise ValueError(f"invalid address: must be None or {self._remote}")
        if len(data) > MAX_PAYLOAD:
            raise ValueError(f"datagram larger than {MAX_PAYLOAD} bytes")
        ch = self._core.channel_of.get(peer)
        if ch is not None:
            self._send_raw((struct.pack("!HH", ch, len(data)), data))
            return
        queue = self._pending.get(peer)
        if queue is None:
            queue = self._pending[peer] = collections.deque()
            self._spawn(self._bind_pending(peer))
        if len(queue) < PENDING_PER_PEER:
            queue.append(bytes(data))
        else:
            self.dropped += 1

    def close(self) -> None:
        self._close(None, refresh_zero=True)

    def abort(self) -> None:
        self._close(None, refresh_zero=False)

    def _close(self, exc, refresh_zero: bool) -> None:
        if self._closing:
            return
        self._closing = True
        if refresh_zero and self._core.nonce is not None:
            # Refresh with LIFETIME 0 deletes the allocation (RFC 5766 §7); no answer awaited.
            try:
                _, data, _ = self._core.request(REFRESH, TurnCore.refresh_attrs(0))
                self._sock.send(data)
            except OSError:
                pass
        for h in (self._refresh_handle, self._channel_handle):
            if h is not None:
                h.cancel()
        for t in list(self._tasks):
            t.cancel()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc or ConnectionAbortedError("TURN transport closed"))
        if self._exit_callback is not None:
            self._process.remove_exit_callback(self._exit_callback)
        self._loop.remove_reader(self._sock.fileno())
        self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        if self._protocol is not None:
            self._loop.call_soon(self._protocol.connection_lost, exc)

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name, default=None):
        info = {
            "peername": self._remote,
            "sockname": self._core.relayed,
            "relayed_address": self._core.relayed,
            "mapped_address": self._core.mapped,
            "turn_server": self._sock.getpeername() if not self._closing else None,
            "socket": self._sock,
        }
        return info.get(name, default)

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def get_write_buffer_size(self) -> int:
        return sum(len(d) for d in self._wqueue)


async def open_datagram_endpoint(transport, loop, protocol_factory, *, local_addr=None, remote_addr=None):
    """Allocate on pthost's TURN listener and return ``(DatagramTransport, protocol)``."""
    process = transport._factory._running()
    turn, (realm, user, password) = _credentials(transport)
    remote = None
    if remote_addr is not None:
        host, port = remote_addr[0], remote_addr[1]
        try:
            remote = normalize_peer((host, port))
        except ValueError:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            remote = normalize_peer(infos[0][4][:2])
    sock = _udp_socket(turn, local_addr)
    sock.setblocking(False)
    t = TurnDatagramTransport(loop, sock, TurnCore(realm, user, password), process, remote)
    try:
        await t._allocate()
        if remote is not None:
            await t._bind(remote)
    except BaseException as e:
        t.abort()
        if process.exiting():
            raise PtHostDiedError("pthost exited during the TURN allocation") from e
        raise
    def on_exit(error):
        try:
            loop.call_soon_threadsafe(t._on_pthost_exit, error)
        except RuntimeError:  # the loop is closed: nothing left to tell
            pass
    t._exit_callback = on_exit
    process.add_exit_callback(on_exit)
    protocol = protocol_factory()
    t.set_protocol(protocol)
    protocol.connection_made(t)
    return t, protocol


# -------------------------------------------------------------------- blocking


class TurnSocket:
    """A blocking UDP socket-like object over a TURN allocation on pthost.

    ``sendto``/``recvfrom`` (and ``connect``/``send``/``recv`` for one peer),
    ``settimeout``, ``close``, context manager. The allocation is made on
    first use; refreshes happen inside the calls (no thread), so an
    application that leaves it idle for more than ten minutes loses the
    allocation. ``getsockname()`` is the relayed address.
    """

    def __init__(self, transport, family=socket.AF_INET):
        self._transport = transport
        self.family = family
        self.type = socket.SOCK_DGRAM
        self._sock: _SocketBase | None = None
        self._core: TurnCore | None = None
        self._process = None
        self._timeout: float | None = None
        self._remote: tuple[str, int] | None = None
        self._rx: collections.deque = collections.deque(maxlen=4096)
        self._refresh_at = 0.0
        self._closed = False

    # ----------------------------------------------------------------- setup

    def _ensure(self) -> TurnCore:
        if self._closed:
            raise OSError(errno.EBADF, "TURN socket is closed")
        if self._core is None:
            self._process = self._transport._factory._running()
            turn, (realm, user, password) = _credentials(self._transport)
            self._sock = _udp_socket(turn)
            self._core = TurnCore(realm, user, password)
            try:
                self._core.allocated(self._transact(ALLOCATE, TurnCore.allocate_attrs))
            except BaseException:
                self._sock.close()
                self._sock, self._core = None, None
                raise
            self._refresh_at = time.monotonic() + max(self._core.lifetime - 60, self._core.lifetime / 2)
        self._maintain()
        return self._core

    def _maintain(self) -> None:
        now = time.monotonic()
        if now >= self._refresh_at:
            msg = self._transact(REFRESH, TurnCore.refresh_attrs(LIFETIME_REQUESTED))
            self._core.lifetime = TurnCore._lifetime(msg)
            self._refresh_at = now + max(self._core.lifetime - 60, self._core.lifetime / 2)
        for peer, at in list(self._core.bound_at.items()):
            if now - at >= CHANNEL_REFRESH:
                self._bind(peer)

    def _next_due(self) -> float:
        due = self._refresh_at
        if self._core and self._core.bound_at:
            due = min(due, min(self._core.bound_at.values()) + CHANNEL_REFRESH)
        return due

    def _transact(self, method: int, attrs) -> StunMessage:
        name = _METHOD_NAMES.get(method, hex(method))
        for _ in range(4):
            tid, data, authed = self._core.request(method, attrs)
            msg = self._exchange(tid, data)
            if msg.cls == ERROR and self._core.challenge(msg, authed):
                continue
            return self._core.accept(msg, name)
        raise TurnError(0, "too many authentication challenges", name)

    def _exchange(self, tid: bytes, data: bytes) -> StunMessage:
        rto = RTO
        for sends in range(MAX_SENDS):
            self._raw_send(data)
            deadline = time.monotonic() + (rto if sends < MAX_SENDS - 1 else LAST_WAIT)
            while True:
                got = self._read_one(deadline)
                if got is None:
                    break
                if isinstance(got, StunMessage) and got.tid == tid:
                    return got
            rto *= 2
        raise TimeoutError("the TURN server did not answer")

    def _raw_send(self, data, *more) -> None:
        try:
            if more:
                self._sock.sendmsg((data,) + more)
            else:
                self._sock.send(data)
        except OSError as e:
            if self._process.exiting():
                raise PtHostDiedError("pthost exited: the TURN allocation is gone") from e
            raise

    def _read_one(self, deadline: float | None):
        """One datagram from pthost before ``deadline``: data is queued, a response returned;
        ``None`` at the deadline."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        ready, _, _ = select.select([self._sock], [], [], left)
        if not ready:
            return None
        try:
            data = self._sock.recv(65536 + 4)
        except OSError as e:
            if self._process.exiting():
                raise PtHostDiedError("pthost exited: the TURN allocation is gone") from e
            raise
        got = self._core.incoming(data)
        if isinstance(got, tuple):
            self._rx.append(got)
        return got if got is not None else True

    def _bind(self, peer: tuple[str, int]) -> int:
        ch = self._core.channel_for(peer)
        self._transact(CHANNEL_BIND, TurnCore.bind_attrs(peer, ch))
        self._core.bound(peer, ch)
        return ch

    # ------------------------------------------------------------ socket API

    def connect(self, address) -> None:
        core = self._ensure()
        peer = normalize_peer(address)
        if peer not in core.channel_of:
            self._bind(peer)
        self._remote = peer

    def sendto(self, data, address) -> int:
        core = self._ensure()
        peer = normalize_peer(address)
        if len(data) > MAX_PAYLOAD:
            raise OSError(errno.EMSGSIZE, f"datagram larger than {MAX_PAYLOAD} bytes")
        ch = core.channel_of.get(peer)
        if ch is None:
            ch = self._bind(peer)
        self._raw_send(struct.pack("!HH", ch, len(data)), data)
        return len(data)

    def send(self, data) -> int:
        if self._remote is None:
            raise OSError(errno.EDESTADDRREQ, "TURN socket is not connected")
        return self.sendto(data, self._remote)

    def recvfrom(self, bufsize: int) -> tuple[bytes, tuple[str, int]]:
        self._ensure()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            while self._rx:
                data, peer = self._rx.popleft()
                if self._remote is None or peer == self._remote:
                    return data[:bufsize], peer
            due = self._next_due()
            wait_until = due if deadline is None else min(deadline, due)
            got = self._read_one(wait_until)
            if got is None:
                if deadline is not None and time.monotonic() >= deadline:
                    if self._timeout == 0:
                        raise BlockingIOError(errno.EAGAIN, "no datagram")
                    raise TimeoutError("timed out")
                self._maintain()

    def recv(self, bufsize: int) -> bytes:
        return self.recvfrom(bufsize)[0]

    def settimeout(self, value: float | None) -> None:
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getsockname(self) -> tuple[str, int]:
        """The relayed address (XOR-RELAYED-ADDRESS)."""
        return self._ensure().relayed

    def getpeername(self) -> tuple[str, int]:
        if self._remote is None:
            raise OSError(errno.ENOTCONN, "TURN socket is not connected")
        return self._remote

    def fileno(self) -> int:
        """The UDP socket towards pthost (readable also for TURN's own answers)."""
        return self._sock.fileno() if self._sock else -1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            try:
                if self._core is not None and self._core.nonce is not None and not self._process.exiting():
                    _, data, _ = self._core.request(REFRESH, TurnCore.refresh_attrs(0))
                    self._sock.send(data)
            except OSError:
                pass
            self._sock.close()

    def __enter__(self) -> "TurnSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if not getattr(self, "_closed", True) and self._sock is not None:
            self._sock.close()
