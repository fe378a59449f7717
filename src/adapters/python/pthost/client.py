"""The client side of the seed's Python interface (PT 2.0 draft 1 §3.2.6, spec/adapters.md §3).

``TransportFactory`` runs one pthost client process; ``PluggableTransport`` is
one of its transports; ``makeSocket`` gives a real socket whose ``connect()``
runs the SOCKS5 handshake with pthost (spec/ipc.md §5) and then belongs to
the application: bytes move between the application and pthost in the
kernel, with no copy and no thread in the adapter.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import socket
import struct
from typing import Any, Callable

from . import _socks
from ._process import PtHostProcess
from .errors import PtHostDiedError, PtHostExitedError, TransportStartError
from .signals import Signals

__all__ = ["TransportFactory", "PluggableTransport", "AsyncPluggableTransport", "TransportSocket"]

# Captured at import, so an application that replaces socket.socket with a
# transport (the seed's drop-in) does not turn the adapter's own sockets into
# transport sockets.
_SocketBase = socket.socket
_recv = _SocketBase.recv
_recv_into = _SocketBase.recv_into
_recvfrom = _SocketBase.recvfrom
_recvfrom_into = _SocketBase.recvfrom_into
_recvmsg = _SocketBase.recvmsg
_send = _SocketBase.send
_sendall = _SocketBase.sendall
_sendmsg = _SocketBase.sendmsg
_connect = _SocketBase.connect

# Transports whose SOCKS destination names the PT server unless an option
# names it (spec/adapters.md §2.9): the options that make them free.
_SERVER_OPTIONS = {"plain": ("serverAddress", "discover"), "rud": ("serverAddress",),
                   "asport": ("serverAddress",)}
# Transports that always know their server (relays and signals): always free.
_ALWAYS_FREE = {"zephyr", "jet"}


class TransportSocket(_SocketBase):
    """A ``socket.socket`` whose ``connect()`` goes through a pthost transport.

    Until ``connect()`` it is an unconnected TCP socket. ``connect(address)``
    connects it to pthost's SOCKS5 front end and runs the handshake, sending
    the connection settings as a JSON block (method ``09``/``80``); after it,
    every operation is the kernel's. The thin overrides below only turn an
    end of stream or a reset caused by pthost's exit into
    :class:`PtHostDiedError` (spec/adapters.md §2.6).
    """

    __slots__ = ("_pt_transport", "_pt_settings", "_pt_peer", "_pt_bound", "_pt_process", "_pt_dead")

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        super().__init__(family, type, proto, fileno)
        self._pt_transport = None
        self._pt_settings = None
        self._pt_peer = None
        self._pt_bound = None
        self._pt_process = None
        self._pt_dead = False

    # ------------------------------------------------------------- handshake

    def connect(self, address) -> None:
        """Connect through the transport: ``address`` is the PT server for a bound transport and
        the final destination for a free one (spec/adapters.md §2.9). Raises the mapped
        :class:`~pthost.errors.SocksError` subclass on a failure reply (spec/ipc.md §5.6)."""
        transport = self._pt_transport
        if transport is None:
            return _connect(self, address)
        if self._pt_peer is not None:
            raise OSError(errno.EISCONN, "transport socket is already connected")
        process = transport._factory._running()
        socks = transport._method().address
        destination = _socks.format_destination(address)
        request = _socks.build_handshake(address, self._pt_settings)
        timeout = self.gettimeout()
        if timeout == 0.0:
            # The handshake needs to wait for pthost; a non-blocking socket runs it blocking.
            self.settimeout(None)
        try:
            try:
                _connect(self, socks)
            except ConnectionRefusedError as e:
                if process.exiting():
                    raise PtHostDiedError() from e
                raise
            _sendall(self, request)
            reader = _socks.HandshakeReader(transport.getTransportName(), destination)
            while (n := reader.need()) > 0:
                try:
                    reader.feed(_recv(self, n))
                except (ConnectionError, _socks.SocksError):
                    if process.exiting():
                        raise PtHostDiedError() from None
                    raise
            self._pt_bound = reader.result()
        except BaseException:
            _SocketBase.close(self)
            raise
        finally:
            if timeout == 0.0 and self.fileno() != -1:
                self.settimeout(0.0)
        self._pt_peer = tuple(address)
        self._pt_process = process
        process.track(self)

    def connect_ex(self, address) -> int:
        try:
            self.connect(address)
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    def getpeername(self):
        """The address given to ``connect()`` (as PySocks' ``socksocket`` does); the socket's real
        peer, pthost's SOCKS5 listener, is :meth:`get_proxy_peername`."""
        if self._pt_peer is not None:
            return self._pt_peer
        return _SocketBase.getpeername(self)

    def get_proxy_peername(self):
        return _SocketBase.getpeername(self)

    @property
    def bound_address(self):
        """``BND.ADDR:BND.PORT`` of pthost's success reply (spec/ipc.md §5.6)."""
        return self._pt_bound

    # ------------------------------------------------- pthost's exit is an error

    def _died(self) -> bool:
        if not self._pt_dead and self._pt_process is not None and self._pt_process.exiting():
            self._pt_dead = True
        return self._pt_dead

    def recv(self, bufsize, flags=0):
        try:
            data = _recv(self, bufsize, flags)
        except ConnectionError:
            if self._died():
                raise PtHostDiedError() from None
            raise
        if not data and bufsize and self._pt_process is not None and self._died():
            raise PtHostDiedError()
        return data

    def recv_into(self, buffer, nbytes=0, flags=0):
        try:
            n = _recv_into(self, buffer, nbytes, flags)
        except ConnectionError:
            if self._died():
                raise PtHostDiedError() from None
            raise
        if n == 0 and self._pt_process is not None and (nbytes or len(buffer)) and self._died():
            raise PtHostDiedError()
        return n

    def recvfrom(self, bufsize, flags=0):
        return self.recv(bufsize, flags), self.getpeername() if self._pt_peer else None

    def recvfrom_into(self, buffer, nbytes=0, flags=0):
        return self.recv_into(buffer, nbytes, flags), self.getpeername() if self._pt_peer else None

    def send(self, data, flags=0):
        if self._pt_dead:
            raise PtHostDiedError()
        try:
            return _send(self, data, flags)
        except ConnectionError:
            if self._died():
                raise PtHostDiedError() from None
            raise

    def sendall(self, data, flags=0):
        if self._pt_dead:
            raise PtHostDiedError()
        try:
            return _sendall(self, data, flags)
        except ConnectionError:
            if self._died():
                raise PtHostDiedError() from None
            raise

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        if self._pt_dead:
            raise PtHostDiedError()
        try:
            if address is None:
                return _sendmsg(self, buffers, ancdata, flags)
            return _sendmsg(self, buffers, ancdata, flags, address)
        except ConnectionError:
            if self._died():
                raise PtHostDiedError() from None
            raise


class PluggableTransport:
    """One transport of a :class:`TransportFactory` (the seed's connection factory)."""

    def __init__(self, factory: "TransportFactory", name: str):
        self._factory = factory
        self._name = name
        self._settings: dict | None = None

    def _method(self):
        process = self._factory._running()
        method = process.methods.get(self._name)
        if method is None:
            reason = process.errors.get(self._name, "not in this factory's transports")
            raise TransportStartError(self._name, reason, process.errors)
        return method

    def getTransportName(self) -> str:
        """The transport's name."""
        return self._name

    def getProxyConfiguration(self) -> str:
        """The proxy this transport is reached through: ``socks5://ip:port`` (pthost's front end)."""
        host, port = self._method().address
        return f"socks5://[{host}]:{port}" if ":" in host else f"socks5://{host}:{port}"

    @property
    def socks_address(self) -> tuple[str, int]:
        return self._method().address

    @property
    def turn_address(self) -> tuple[str, int] | None:
        """pthost's TURN listener for this transport (``CMETHOD <t> turn``), if it has one."""
        return self._method().turn

    def configure(self, configuration: dict | None) -> None:
        """Set the connection settings every later socket sends (the JSON block of
        spec/ipc.md §5.3, e.g. ``{"destination": "host:port"}``); ``None`` clears them."""
        if configuration is not None and not isinstance(configuration, dict):
            raise TypeError("connection settings are a dict (a JSON object)")
        self._settings = dict(configuration) if configuration else None

    def isBound(self) -> bool:
        """True when ``connect()``'s address selects the PT server; False when the transport
        already knows its server and the address is the final destination (spec/adapters.md §2.9)."""
        if self._name in _ALWAYS_FREE:
            return False
        options = (self._factory._config.get("options") or {}).get(self._name)
        keys = _SERVER_OPTIONS.get(self._name, ("serverAddress",))
        if isinstance(options, dict) and any(options.get(k) for k in keys):
            return False
        return True

    def makeSocket(self, family=socket.AF_INET, type_=socket.SOCK_STREAM, protocol=0, *,
                   settings: dict | None = None):
        """A socket-like object whose ``connect()`` goes through this transport.

        ``SOCK_STREAM`` gives a :class:`TransportSocket` (a real ``socket.socket``);
        ``SOCK_DGRAM`` a blocking :class:`~pthost.turn.TurnSocket` over pthost's TURN
        listener. ``family`` names the destination's address family; the socket to
        pthost has the family of pthost's listener. ``settings`` replaces the
        transport's connection settings for this socket.
        """
        family = socket.AF_INET if family in (None, -1) else family
        type_ = socket.SOCK_STREAM if type_ in (None, -1) else type_
        base = type_ & ~(getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0))
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.EAFNOSUPPORT, "transport sockets carry AF_INET or AF_INET6 destinations")
        if base == socket.SOCK_DGRAM:
            from .turn import TurnSocket
            return TurnSocket(self, family)
        if base != socket.SOCK_STREAM:
            raise OSError(errno.ESOCKTNOSUPPORT, "transport sockets are SOCK_STREAM or SOCK_DGRAM")
        listener = self._method().address
        sock = TransportSocket(socket.AF_INET6 if ":" in listener[0] else socket.AF_INET, type_, 0)
        sock._pt_transport = self
        sock._pt_settings = settings if settings is not None else self._settings
        return sock

    def __call__(self, family=-1, type_=-1, protocol=-1, fileno=None, **kwargs):
        """Drop-in replacement for ``socket.socket`` (``socket.socket = transport``)."""
        type_ = kwargs.pop("type", type_)
        protocol = kwargs.pop("proto", protocol)
        if kwargs:
            raise TypeError(f"unexpected arguments: {', '.join(kwargs)}")
        if fileno is not None:
            # socket.accept()/dup() build sockets around existing descriptors: those stay ordinary.
            return _SocketBase(family, type_, protocol, fileno)
        family = socket.AF_INET if family == -1 else family
        if family not in (socket.AF_INET, socket.AF_INET6):
            return _SocketBase(family, type_, protocol)
        return self.makeSocket(family, type_, protocol)

    def createAsyncTransport(self, asyncLoop=None) -> "AsyncPluggableTransport":
        """This transport for asyncio: ``asyncLoop`` (default: the running loop at each call)."""
        return AsyncPluggableTransport(self, asyncLoop)

    # PEP 8 aliases (spec/adapters.md §3.1)
    get_transport_name = getTransportName
    get_proxy_configuration = getProxyConfiguration
    is_bound = isBound
    make_socket = makeSocket
    create_async_transport = createAsyncTransport

    def __repr__(self) -> str:
        return f"<PluggableTransport {self._name!r}>"


class AsyncPluggableTransport:
    """The seed's asyncio face of a transport: ``create_connection`` and ``create_datagram_endpoint``
    with the signatures of the event loop's own methods."""

    def __init__(self, transport: PluggableTransport, loop: asyncio.AbstractEventLoop | None = None):
        self._transport = transport
        self._loop = loop

    @property
    def transport(self) -> PluggableTransport:
        return self._transport

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    async def _handshake(self, host, port, local_addr=None, settings=None) -> TransportSocket:
        loop = self._get_loop()
        t = self._transport
        process = t._factory._running()
        listener = t._method().address
        # The transport is attached only after the handshake: loop.sock_connect() calls
        # sock.connect(), which must stay the kernel's connect to pthost's listener here.
        sock = TransportSocket(socket.AF_INET6 if ":" in listener[0] else socket.AF_INET, socket.SOCK_STREAM, 0)
        settings = settings if settings is not None else t._settings
        sock.setblocking(False)
        destination = _socks.format_destination((host, port))
        try:
            if local_addr is not None:
                sock.bind(local_addr)
            try:
                await loop.sock_connect(sock, listener)
            except ConnectionRefusedError as e:
                if process.exiting():
                    raise PtHostDiedError() from e
                raise
            await loop.sock_sendall(sock, _socks.build_handshake((host, port), settings))
            reader = _socks.HandshakeReader(t.getTransportName(), destination)
            while (n := reader.need()) > 0:
                try:
                    reader.feed(await loop.sock_recv(sock, n))
                except (ConnectionError, _socks.SocksError):
                    if process.exiting():
                        raise PtHostDiedError() from None
                    raise
            sock._pt_bound = reader.result()
        except BaseException:
            sock.close()
            raise
        sock._pt_transport = t
        sock._pt_settings = settings
        sock._pt_peer = (host, port)
        sock._pt_process = process
        process.track(sock)
        return sock

    async def create_connection(self, protocol_factory, host=None, port=None, *, ssl=None,
                                family=0, proto=0, flags=0, sock=None, local_addr=None,
                                server_hostname=None, ssl_handshake_timeout=None,
                                ssl_shutdown_timeout=None, happy_eyeballs_delay=None,
                                interleave=None, all_errors=False, settings=None):
        """``loop.create_connection`` through the transport: ``(host, port)`` is the PT server or
        the final destination as for ``connect()``. ``family``, ``proto``, ``flags``,
        ``happy_eyeballs_delay``, ``interleave`` and ``all_errors`` concern name resolution,
        which pthost's transport does, and are ignored; ``sock`` is not supported.
        ``settings`` (an addition) replaces the connection settings."""
        if sock is not None:
            raise ValueError("sock is not supported: the transport makes the connection")
        if host is None or port is None:
            raise ValueError("host and port are required")
        s = await self._handshake(host, port, local_addr, settings)
        if ssl and server_hostname is None:
            server_hostname = host
        kwargs = {}
        if ssl_handshake_timeout is not None:
            kwargs["ssl_handshake_timeout"] = ssl_handshake_timeout
        if ssl_shutdown_timeout is not None:
            kwargs["ssl_shutdown_timeout"] = ssl_shutdown_timeout
        try:
            return await self._get_loop().create_connection(
                protocol_factory, sock=s, ssl=ssl, server_hostname=server_hostname if ssl else None, **kwargs)
        except BaseException:
            s.close()
            raise

    async def open_connection(self, host, port, *, limit=2 ** 16, **kwds):
        """``asyncio.open_connection`` through the transport: ``(reader, writer)``."""
        loop = self._get_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(lambda: protocol, host, port, **kwds)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, *,
                                       family=0, proto=0, flags=0, reuse_address=None,
                                       reuse_port=None, allow_broadcast=None, sock=None):
        """``loop.create_datagram_endpoint`` over pthost's TURN listener (RFC 5766 client,
        spec/adapters.md §3.5): returns ``(transport, protocol)`` where the transport is an
        :class:`asyncio.DatagramTransport` whose datagrams travel inside the PT transport.
        ``remote_addr`` fixes the peer; otherwise ``sendto(data, addr)`` names it.
        ``local_addr`` binds the UDP socket towards pthost; ``allow_broadcast`` and ``sock``
        are not supported; the other arguments are ignored."""
        from .turn import open_datagram_endpoint
        if sock is not None:
            raise ValueError("sock is not supported: the adapter owns the socket towards pthost")
        if allow_broadcast:
            raise ValueError("broadcast is not supported over TURN")
        return await open_datagram_endpoint(self._transport, self._get_loop(), protocol_factory,
                                            local_addr=local_addr, remote_addr=remote_addr)


class TransportFactory:
    """A pthost client process and its transports (the seed's ``TransportFactory``).

    ``configuration`` is pthost's client configuration (spec/ipc.md §3.2) as a
    dict or JSON text; ``role`` may be omitted and ``exit-on-stdin-close`` is
    always true. Unless it has a ``turn`` key or ``turn=False`` is given, the
    adapter adds one with loopback-only random credentials, so that
    ``create_datagram_endpoint`` works (spec/adapters.md §2.3). ``local`` is the
    seed's local storage: pthost's ``state`` (default: a private temporary
    directory removed on close). ``signals`` is a :class:`Signals` object
    (default: a new one, at :attr:`signals`).
    """

    def __init__(self, configuration: dict | str | None = None, *, pthost: str | os.PathLike | None = None,
                 signals: Signals | None = None, local: str | os.PathLike | None = None,
                 turn: bool = True, start_timeout: float = 30.0, env: dict | None = None):
        self._executable = pthost
        self._signals = signals if signals is not None else Signals()
        self._local = local
        self._turn = turn
        self._start_timeout = start_timeout
        self._env = env
        self._config: dict = {}
        self._process: PtHostProcess | None = None
        self._transports: dict[str, PluggableTransport] = {}
        self._exit_callbacks: list[Callable] = []
        self.turn_credentials: tuple[str, str, str] | None = None
        if configuration is not None:
            self.configure(configuration)

    def configure(self, configuration: dict | str) -> None:
        """Start pthost with ``configuration`` (a running one is closed first) and wait for
        ``CMETHODS DONE``. Raises :class:`~pthost.errors.ConfigurationError` (exit 78) or
        :class:`~pthost.errors.TransportStartError` (no transport started)."""
        config = json.loads(configuration) if isinstance(configuration, (str, bytes)) else dict(configuration)
        if config.setdefault("role", "client") != "client":
            raise ValueError('a TransportFactory runs pthost as "client"; use ServerTransport for servers')
        if self._local is not None:
            config.setdefault("state", os.fspath(self._local))
        turn = config.get("turn")
        if turn is None and self._turn:
            user, password = "adapter", secrets.token_hex(16)
            config["turn"] = {"listenaddr": "127.0.0.1:0", "realm": "pthost-adapter", "users": {user: password}}
            self.turn_credentials = ("pthost-adapter", user, password)
        elif isinstance(turn, dict) and isinstance(turn.get("users"), dict) and turn["users"]:
            user, password = next(iter(turn["users"].items()))
            self.turn_credentials = (str(turn.get("realm", "")), str(user), str(password))
        else:
            self.turn_credentials = None
        self.close()
        process = PtHostProcess(config, executable=self._executable, signals=self._signals,
                                start_timeout=self._start_timeout, env=self._env, temp_state=True)
        self._config = config
        process.start()
        self._process = process
        process.add_exit_callback(self._on_exit)

    def _on_exit(self, error) -> None:
        for cb in list(self._exit_callbacks):
            try:
                cb(error)
            except Exception:
                pass

    def _running(self) -> PtHostProcess:
        p = self._process
        if p is None:
            raise PtHostExitedError("the factory is not configured (call configure())")
        p.check_running()
        return p

    def getTransportNames(self, transports=None) -> list[str]:
        """The transports that started, in configuration order; with ``transports``, those of
        them that started."""
        names = list(self._running().methods)
        if transports is not None:
            wanted = [transports] if isinstance(transports, str) else list(transports)
            names = [n for n in wanted if n in names]
        return names

    def getConnectionFactory(self, transportName: str) -> PluggableTransport:
        """The :class:`PluggableTransport` for ``transportName``; raises
        :class:`~pthost.errors.TransportStartError` (its ``CMETHOD-ERROR``) if it did not start."""
        process = self._running()
        if transportName not in process.methods:
            reason = process.errors.get(transportName, "not in this factory's transports")
            raise TransportStartError(transportName, reason, process.errors)
        t = self._transports.get(transportName)
        if t is None:
            t = self._transports[transportName] = PluggableTransport(self, transportName)
        return t

    def getTransportErrors(self) -> dict[str, str]:
        """``CMETHOD-ERROR`` reasons by transport name."""
        return dict(self._process.errors) if self._process else {}

    def getStats(self, timeout: float = 5.0) -> dict[str, dict]:
        """Current counters of every started transport: pthost is asked with ``STATUS`` on stdin
        and the answering lines are returned (spec/ipc.md §4.7)."""
        return self._running().request_status(timeout)

    @property
    def signals(self) -> Signals:
        return self._signals

    @property
    def error(self) -> PtHostExitedError | None:
        """How pthost ended when it ended by itself (killed, crashed); ``None`` otherwise."""
        return self._process.error if self._process else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def stderr(self) -> str:
        """The last lines pthost wrote on stderr."""
        return self._process.stderr_text() if self._process else ""

    def add_exit_callback(self, callback: Callable[[PtHostExitedError | None], None]) -> None:
        """``callback(error)`` when pthost exits; ``error`` is ``None`` after :meth:`close`."""
        self._exit_callbacks.append(callback)
        if self._process is not None and self._process.exited:
            callback(self._process.error)

    def close(self, timeout: float = 10.0) -> None:
        """End pthost (stdin closed, then killed after ``timeout`` seconds)."""
        p = self._process
        if p is not None:
            p.close(timeout)  # pid, error and stderr stay readable

    def __enter__(self) -> "TransportFactory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # PEP 8 aliases (spec/adapters.md §3.1)
    get_transport_names = getTransportNames
    get_connection_factory = getConnectionFactory
    get_transport_errors = getTransportErrors
    get_stats = getStats
