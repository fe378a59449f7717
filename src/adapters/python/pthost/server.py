"""The server side (spec/adapters.md §3.6): the seed's ``ServerTransport`` and ``ServerManager``.

PT 2.0 draft 1 gives Python no server interface; its JavaScript one
(``generateConfiguration``, ``createServer``, ``createProxy``, ``ServerManager``)
is taken over with Python types. Each server is one pthost process in the
server role running one transport.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from typing import Callable

from ._process import PtHostProcess, find_executable
from .errors import PtHostError, PtHostExitedError
from .signals import Signals

__all__ = ["ServerTransport", "ServerManager"]

_SocketBase = socket.socket


def _host_port(value) -> str:
    """``"host:port"``, ``(host, port)`` or a bound socket → pthost's ``host:port`` text."""
    if isinstance(value, str):
        return value
    if isinstance(value, _SocketBase):
        value = value.getsockname()
    host, port = value[0], value[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ServerManager:
    """A running PT server (pthost in the server role): its address, signals, stats and end."""

    def __init__(self, transport: str, process: PtHostProcess, listener: _SocketBase | None = None,
                 accept_thread: threading.Thread | None = None):
        self._transport = transport
        self._process = process
        self._listener = listener
        self._accept_thread = accept_thread

    @property
    def transport(self) -> str:
        return self._transport

    @property
    def address(self) -> tuple[str, int]:
        """Where the transport listens (the ``SMETHOD`` line, spec/ipc.md §4.5)."""
        return self._process.methods[self._transport].address

    @property
    def args(self) -> dict[str, str]:
        """The ``SMETHOD`` line's ``ARGS:`` (e.g. zephyr's ``pin``)."""
        return dict(self._process.methods[self._transport].args)

    @property
    def signals(self) -> Signals:
        return self._process._signals

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def error(self) -> PtHostExitedError | None:
        """How pthost ended when it ended by itself; ``None`` while it runs or after close()."""
        return self._process.error

    @property
    def stderr(self) -> str:
        return self._process.stderr_text()

    @property
    def listener(self) -> _SocketBase | None:
        """The adapter's own listener when ``connectionListener`` was given to ``createServer``."""
        return self._listener

    def getStats(self, timeout: float = 5.0) -> dict:
        """Current counters of the transport (``STATUS`` request on stdin, spec/ipc.md §4.7):
        ``{"transport", "connections", "opened", "failed", "bytes_in", "bytes_out"}``."""
        return self._process.request_status(timeout)[self._transport]

    def add_exit_callback(self, callback: Callable[[PtHostExitedError | None], None]) -> None:
        self._process.add_exit_callback(callback)

    def close(self, callback: Callable[[], None] | None = None, timeout: float = 10.0) -> None:
        """End the server: pthost's stdin is closed (it stops accepting and drains, spec/ipc.md §9),
        then it is killed after ``timeout`` seconds; ``callback()`` runs once it has exited."""
        self._process.close(timeout)
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            except OSError:
                pass
            self._listener.close()
            if self._accept_thread is not None:
                self._accept_thread.join(timeout)
        if callback is not None:
            callback()

    def __enter__(self) -> "ServerManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    get_stats = getStats

    def __repr__(self) -> str:
        return f"<ServerManager {self._transport!r} at {self.address} pid {self.pid}>"


class ServerTransport:
    """The server side of one transport (the seed's ``ServerTransport``).

    ``transportName`` is the pthost transport (``plain``, ``zephyr``, ...);
    ``pthost`` the executable (default ``$PTHOST_EXE``, then PATH).
    """

    def __init__(self, transportName: str, *, pthost: str | os.PathLike | None = None,
                 start_timeout: float = 30.0, env: dict | None = None):
        self._name = transportName
        self._executable = pthost
        self._start_timeout = start_timeout
        self._env = env

    @property
    def name(self) -> str:
        return self._name

    def generateConfiguration(self) -> dict:
        """``{"client": ..., "server": ...}`` from ``pthost generate-config`` (spec/ipc.md §2.3):
        the options for each side's ``options.<transport>``."""
        exe = find_executable(self._executable)
        r = subprocess.run([exe, "generate-config", self._name], capture_output=True,
                           timeout=self._start_timeout, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            message = r.stderr.decode("utf-8", "replace").strip().splitlines()
            raise PtHostError(message[-1] if message else f"generate-config exited {r.returncode}")
        return json.loads(r.stdout)

    def _start(self, configuration, local, signals, options, target=None, allow=None) -> PtHostProcess:
        config: dict = {"role": "server", "transports": [self._name]}
        for key, value in (options or {}).items():
            if key in ("role", "transports"):
                raise ValueError(f"options may not set {key!r}: a ServerTransport runs its one transport as server")
            if key == "bindaddr" and isinstance(value, (str, tuple)):
                value = {self._name: _host_port(value)}
            elif key == "target" and not isinstance(value, str):
                value = _host_port(value)
            config[key] = value
        if configuration is not None:
            config.setdefault("options", {})[self._name] = configuration
        if local is not None:
            config["state"] = os.fspath(local)
        if target is not None:
            config["target"] = _host_port(target)
        if allow is not None:
            config["allow"] = list(allow)
        process = PtHostProcess(config, executable=self._executable,
                                signals=signals if signals is not None else Signals(),
                                start_timeout=self._start_timeout, env=self._env, temp_state=True)
        process.start()
        return process

    def createServer(self, configuration=None, local=None, signals: Signals | None = None,
                     options: dict | None = None, connectionListener: Callable | None = None, *,
                     target=None) -> ServerManager:
        """A bound server: every session reaches the application's own listener.

        ``configuration`` is the transport's options (``generateConfiguration()["server"]``);
        ``local`` pthost's ``state`` directory (default: private, removed on close);
        ``signals`` a :class:`Signals` (default: a new one, at ``manager.signals``);
        ``options`` further pthost keys (``bindaddr`` may be ``"ip:port"``, ``loglevel``, ...).
        The listener is ``target`` (``"host:port"``, ``(host, port)`` or a listening socket),
        or ``options["target"]``; or, with ``connectionListener``, a loopback listener the
        adapter opens, calling ``connectionListener(sock, address)`` for each session from
        one accept thread.
        """
        listener = None
        thread = None
        if target is None and (options or {}).get("target") is None:
            if connectionListener is None:
                raise ValueError("createServer needs a target (the application's listener) or a connectionListener")
            listener = _SocketBase(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(512)
            target = listener
        try:
            process = self._start(configuration, local, signals, options, target=target)
        except BaseException:
            if listener is not None:
                listener.close()
            raise
        if listener is not None:
            thread = threading.Thread(target=_accept_loop, args=(listener, connectionListener),
                                      name=f"pthost-{process.pid}-accept", daemon=True)
            thread.start()
        return ServerManager(self._name, process, listener, thread)

    def createProxy(self, configuration=None, local=None, signals: Signals | None = None,
                    options: dict | None = None, *, allow=None) -> ServerManager:
        """A free server: each session goes to the destination its client names, if ``allow``
        (spec/ipc.md §3.4; here or in ``options["allow"]``) admits it."""
        return ServerManager(self._name, self._start(configuration, local, signals, options, allow=allow))

    generate_configuration = generateConfiguration
    create_server = createServer
    create_proxy = createProxy


def _accept_loop(listener: _SocketBase, callback: Callable) -> None:
    while True:
        try:
            conn, addr = listener.accept()
        except OSError:
            return
        try:
            callback(conn, addr)
        except Exception:
            import logging
            logging.getLogger("pthost").exception("pthost adapter: connectionListener failed")
            conn.close()
