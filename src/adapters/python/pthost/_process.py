"""One pthost child process: launch, stdout lines, stdin lines, stderr, end.

spec/adapters.md §2.3–§2.7 describe what this module does with spec/ipc.md:
the configuration always has ``exit-on-stdin-close: true``, stdout is parsed
line by line (spec/ipc.md §4), stdin carries message lines and ``STATUS``
requests (spec/ipc.md §4.10), stderr is kept for error messages.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigurationError, PtHostExitedError, TransportStartError

__all__ = ["PtHostProcess", "MethodLine", "find_executable", "parse_address"]

_log = logging.getLogger("pthost")
_stderr_log = logging.getLogger("pthost.stderr")

# Every live process, closed by the atexit hook (spec/adapters.md §2.4).
_live: "weakref.WeakSet[PtHostProcess]" = weakref.WeakSet()
_live_lock = threading.Lock()

# STATUS keys (spec/ipc.md §4.7) → the keys of the dict getStats() returns.
_STATUS_KEYS = {
    "CONNECTIONS": "connections",
    "OPENED": "opened",
    "FAILED": "failed",
    "BYTES-IN": "bytes_in",
    "BYTES-OUT": "bytes_out",
}

# Kernel task flag PF_EXITING (include/linux/sched.h): set when a task starts
# to exit, before its files are closed.
_PF_EXITING = 0x4


def find_executable(explicit: str | os.PathLike | None = None) -> str:
    """The pthost executable: ``explicit``, else ``$PTHOST_EXE``, else ``pthost`` on PATH."""
    if explicit:
        return os.fspath(explicit)
    env = os.environ.get("PTHOST_EXE")
    if env:
        return env
    found = shutil.which("pthost")
    if found:
        return found
    raise FileNotFoundError(
        "pthost executable not found: pass pthost=PATH, set PTHOST_EXE or put pthost on PATH")


def parse_address(text: str) -> tuple[str, int]:
    """``ip:port`` or ``[ipv6]:port`` (spec/ipc.md §3.5) → ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"not an address: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _unescape_args(text: str) -> dict[str, str]:
    """SMETHOD ``ARGS:k=v,k=v`` with ``\\`` escapes (spec/ipc.md §4.5)."""
    args: dict[str, str] = {}
    key: list[str] = []
    value: list[str] = []
    cur = key
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if c == "=" and cur is key:
            cur = value
        elif c == ",":
            args["".join(key)] = "".join(value)
            key, value = [], []
            cur = key
        else:
            cur.append(c)
        i += 1
    if key or value:
        args["".join(key)] = "".join(value)
    return args


@dataclass
class MethodLine:
    """A started transport: its ``CMETHOD``/``SMETHOD`` line(s)."""

    name: str
    address: tuple[str, int]
    args: dict[str, str] = field(default_factory=dict)
    turn: tuple[str, int] | None = None


class PtHostProcess:
    """A running pthost (spec/ipc.md §2): started by :meth:`start`, ended by :meth:`close`.

    The configuration handed over must be complete except for
    ``exit-on-stdin-close``, which this class always sets to ``true``.
    Threads: one reads stdout, one reads stderr (per process, never per
    connection).
    """

    def __init__(self, config: dict, *, executable: str | os.PathLike | None = None,
                 signals=None, start_timeout: float = 30.0, env: dict | None = None,
                 temp_state: bool = False):
        self.role = config.get("role")
        if self.role not in ("client", "server"):
            raise ValueError('role must be "client" or "server"')
        if config.get("exit-on-stdin-close", True) is not True:
            raise ValueError("exit-on-stdin-close must be true: the adapter ends pthost by closing its stdin")
        self.config = dict(config)
        self.config["exit-on-stdin-close"] = True
        self.executable = find_executable(executable)
        self.start_timeout = start_timeout
        self.env = env
        self._temp_state = None
        if temp_state and "state" not in self.config:
            # The seed's `local` defaults to a private directory removed on close (spec/adapters.md §2.3).
            self._temp_state = tempfile.mkdtemp(prefix="pthost-state-")
            self.config["state"] = self._temp_state
        self.methods: dict[str, MethodLine] = {}
        self.errors: dict[str, str] = {}
        self.version: str | None = None
        self.proc: subprocess.Popen | None = None
        self._cond = threading.Condition()
        self._done = False
        self._exited = False
        self._closing = False
        self._error_line: str | None = None
        self._exit_error: PtHostExitedError | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._stderr_done = threading.Event()
        self._stdin_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._status_round: dict[str, dict] | None = None
        self.last_status: dict[str, dict] = {}
        self._exit_callbacks: list[Callable[[PtHostExitedError | None], None]] = []
        self._sockets: "weakref.WeakSet" = weakref.WeakSet()
        self._signals = signals

    # ----------------------------------------------------------------- start

    def start(self) -> "PtHostProcess":
        """Launch pthost and wait for ``*METHODS DONE`` (spec/ipc.md §2.2).

        Raises :class:`ConfigurationError` (exit 78/73), :class:`TransportStartError`
        (no transport started), :class:`PtHostExitedError` (anything else).
        """
        argv = [self.executable, json.dumps(self.config, separators=(",", ":"), ensure_ascii=False)]
        if self._signals is not None:
            try:
                self._signals._claim(self)  # before launching: a Signals object serves one pthost
            except BaseException:
                self._remove_temp_state()
                raise
        env = None
        if self.env is not None:
            env = dict(os.environ)
            env.update(self.env)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, close_fds=True,
                # Its own session: a terminal's Ctrl-C reaches the application, which
                # then ends pthost through stdin (spec/adapters.md §2.4).
                start_new_session=True)
        except BaseException:
            self._remove_temp_state()
            raise
        with _live_lock:
            _live.add(self)
        threading.Thread(target=self._read_stdout, name=f"pthost-{self.proc.pid}-stdout", daemon=True).start()
        threading.Thread(target=self._read_stderr, name=f"pthost-{self.proc.pid}-stderr", daemon=True).start()
        if self._signals is not None:
            self._signals._flush_pending()
        deadline = time.monotonic() + self.start_timeout
        with self._cond:
            while not self._done and not self._exited:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            done, exited = self._done, self._exited
        if exited:
            self._stderr_done.wait(5)
            raise self._start_failure()
        if not done:
            self.kill()
            raise PtHostExitedError(f"pthost did not finish starting within {self.start_timeout} s",
                                    stderr=self.stderr_text())
        if not self.methods:
            # No transport started: pthost exits 69 (spec/ipc.md §2.2 step 9).
            self.wait(10)
            raise self._start_failure()
        return self

    def _start_failure(self) -> Exception:
        code = self.proc.returncode if self.proc else None
        stderr = self.stderr_text()
        if code in (78, 73):
            message = next((l for l in self._stderr_tail if l.startswith("pthost:")), None) \
                or self._error_line or f"pthost exited {code}"
            return ConfigurationError(message, key=ConfigurationError.key_of(message),
                                      line=self._error_line, exit_code=code, stderr=stderr)
        if self.errors:
            name, reason = next(iter(self.errors.items()))
            return TransportStartError(name, reason, self.errors)
        return PtHostExitedError(f"pthost exited with status {code} while starting"
                                 + (f": {stderr.splitlines()[-1]}" if stderr else ""),
                                 exit_code=code, stderr=stderr)

    # ------------------------------------------------------------ stdout side

    def _read_stdout(self) -> None:
        out = self.proc.stdout
        try:
            for raw in out:
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    continue
                try:
                    self._on_line(line)
                except Exception:  # a bad line must not end the reader
                    _log.exception("pthost adapter: cannot handle line %r", line)
        except (OSError, ValueError):
            pass
        finally:
            out.close()
            self._on_exit()

    def _on_line(self, line: str) -> None:
        keyword, _, rest = line.partition(" ")
        if keyword in ("CMESSAGE", "SMESSAGE"):
            signals = self._signals
            if signals is not None:
                signals._deliver(line)
            return
        if keyword == "STATUS":
            self._on_status(rest)
            return
        with self._cond:
            if keyword == "VERSION":
                self.version = rest
            elif keyword in ("VERSION-ERROR", "ENV-ERROR", "PROXY-ERROR"):
                self._error_line = line
            elif keyword in ("CMETHOD", "SMETHOD"):
                self._on_method(keyword, rest)
            elif keyword in ("CMETHOD-ERROR", "SMETHOD-ERROR"):
                name, _, reason = rest.partition(" ")
                self.errors[name] = reason
            elif line in ("CMETHODS DONE", "SMETHODS DONE"):
                self._done = True
            self._cond.notify_all()

    def _on_method(self, keyword: str, rest: str) -> None:
        parts = rest.split(" ")
        if keyword == "CMETHOD":
            # CMETHOD <t> socks5 <ip:port> | CMETHOD <t> turn <ip:port> (spec/ipc.md §4.4)
            if len(parts) < 3:
                return
            name, proto, addr = parts[0], parts[1], parts[2]
            if proto == "socks5":
                self.methods[name] = MethodLine(name, parse_address(addr))
            elif proto == "turn" and name in self.methods:
                self.methods[name].turn = parse_address(addr)
        else:
            # SMETHOD <t> <ip:port> [ARGS:k=v,...] (spec/ipc.md §4.5)
            if len(parts) < 2:
                return
            name, addr = parts[0], parts[1]
            args: dict[str, str] = {}
            tail = rest.split(" ", 2)
            if len(tail) == 3 and tail[2].startswith("ARGS:"):
                args = _unescape_args(tail[2][5:])
            self.methods[name] = MethodLine(name, parse_address(addr), args)

    def _on_status(self, rest: str) -> None:
        fields = {}
        for item in rest.split(" "):
            k, _, v = item.partition("=")
            fields[k] = v
        name = fields.get("TRANSPORT")
        if not name:
            return
        stats: dict = {"transport": name}
        for k, v in fields.items():
            if k in _STATUS_KEYS:
                try:
                    stats[_STATUS_KEYS[k]] = int(v)
                except ValueError:
                    pass
        with self._cond:
            self.last_status[name] = stats
            if self._status_round is not None:
                self._status_round[name] = stats
            self._cond.notify_all()

    # ------------------------------------------------------------ stderr side

    def _read_stderr(self) -> None:
        try:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._stderr_tail.append(line)
                if " fail: " in line or " crit: " in line:
                    _stderr_log.error("%s", line)
                elif " warn: " in line:
                    _stderr_log.warning("%s", line)
                else:
                    _stderr_log.debug("%s", line)
        except (OSError, ValueError):
            pass
        finally:
            self.proc.stderr.close()
            self._stderr_done.set()

    def stderr_text(self) -> str:
        return "\n".join(self._stderr_tail)

    # ------------------------------------------------------------------ exit

    def _on_exit(self) -> None:
        code = self.proc.wait()
        self._stderr_done.wait(5)
        with self._stdin_lock:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        error = None
        if not self._closing:
            tail = self.stderr_text()
            what = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            error = PtHostExitedError(f"pthost (pid {self.proc.pid}) {what}", exit_code=code, stderr=tail)
        with self._cond:
            self._exited = True
            self._exit_error = error
            callbacks = list(self._exit_callbacks)
            self._cond.notify_all()
        # Open transport sockets learn it at once (spec/adapters.md §2.6).
        for sock in list(self._sockets):
            sock._pt_dead = True
        if self._signals is not None:
            self._signals._detach(self)
        self._remove_temp_state()
        with _live_lock:
            _live.discard(self)
        for cb in callbacks:
            try:
                cb(error)
            except Exception:
                _log.exception("pthost adapter: exit callback failed")

    def add_exit_callback(self, callback: Callable[[PtHostExitedError | None], None]) -> None:
        """``callback(error)`` once pthost has exited (``error`` is ``None`` after close())."""
        with self._cond:
            if not self._exited:
                self._exit_callbacks.append(callback)
                return
            error = self._exit_error
        callback(error)

    def remove_exit_callback(self, callback) -> None:
        with self._cond:
            if callback in self._exit_callbacks:
                self._exit_callbacks.remove(callback)

    @property
    def exited(self) -> bool:
        return self._exited

    @property
    def error(self) -> PtHostExitedError | None:
        """What ended pthost when it ended by itself; ``None`` while it runs or after close()."""
        return self._exit_error

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exiting(self) -> bool:
        """True once pthost is exiting or gone: read from /proc, so it holds as soon as
        its sockets close, before the stdout reader has seen the end."""
        if self._exited:
            return True
        proc = self.proc
        if proc is None:
            return True
        try:
            with open(f"/proc/{proc.pid}/stat", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return True
        except OSError:
            return proc.poll() is not None
        fields = data[data.rindex(b")") + 2:].split()
        state, flags = fields[0], int(fields[6])
        return state in (b"Z", b"X", b"x") or bool(flags & _PF_EXITING)

    def check_running(self) -> None:
        """Raise what the factory reports when pthost is no longer running."""
        if self._exited:
            raise self._exit_error or PtHostExitedError("pthost was closed", exit_code=self.proc.returncode)

    def track(self, sock) -> None:
        self._sockets.add(sock)

    # ----------------------------------------------------------------- stdin

    def write_line(self, line: str) -> None:
        """Write one line on pthost's stdin (spec/ipc.md §4.10)."""
        data = (line + "\n").encode("utf-8")
        with self._stdin_lock:
            stdin = self.proc.stdin if self.proc else None
            if stdin is None or stdin.closed:
                raise PtHostExitedError("pthost's stdin is closed")
            try:
                stdin.write(data)
                stdin.flush()
            except (BrokenPipeError, ValueError) as e:
                raise self._exit_error or PtHostExitedError(f"pthost is gone: {e}") from e

    def request_status(self, timeout: float = 5.0) -> dict[str, dict]:
        """Write ``STATUS`` and wait for one answering line per started transport (spec/ipc.md §4.7)."""
        self.check_running()
        names = list(self.methods)
        with self._status_lock:
            with self._cond:
                self._status_round = {}
            try:
                self.write_line("STATUS")
                deadline = time.monotonic() + timeout
                with self._cond:
                    while not all(n in self._status_round for n in names):
                        if self._exited:
                            self.check_running()
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError(f"pthost did not answer STATUS within {timeout} s")
                        self._cond.wait(left)
                    return dict(self._status_round)
            finally:
                with self._cond:
                    self._status_round = None

    # ------------------------------------------------------------------- end

    def close(self, timeout: float = 10.0) -> int | None:
        """End pthost: close its stdin (it drains open sessions for up to 5 s, spec/ipc.md §9),
        wait, and after ``timeout`` seconds kill it. Returns its exit status."""
        proc = self.proc
        if proc is None:
            self._remove_temp_state()
            return None
        self._closing = True
        with self._stdin_lock:
            try:
                if proc.stdin and not proc.stdin.closed:
                    proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.wait(timeout)
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._closing = True
            self.proc.kill()
            self.proc.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the exit has been handled (sockets marked, callbacks run)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._exited, timeout)

    def _remove_temp_state(self) -> None:
        path, self._temp_state = self._temp_state, None
        if path:
            shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _close_all() -> None:
    """Interpreter exit: end every pthost still running (spec/adapters.md §2.4)."""
    with _live_lock:
        live = list(_live)
    for p in live:
        try:
            p.close(timeout=6.0)
        except Exception:  # pragma: no cover - best effort at exit
            print("pthost adapter: could not close pthost", file=sys.stderr)
