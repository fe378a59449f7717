"""The seed's ``signals`` stream: CMESSAGE/SMESSAGE lines (spec/ipc.md §6, spec/adapters.md §2.5).

A :class:`Signals` object belongs to one adapter (one pthost process). Its
*output* is every ``CMESSAGE``/``SMESSAGE`` line its pthost writes, for the
application to carry to the other side; :meth:`Signals.send` is its *input*,
a line received from the other side, written to pthost's stdin. Two adapters
are linked by handing each one's output to the other's ``send`` — in one
process (:meth:`Signals.link`) or over any channel the application chooses.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Iterator

from .errors import PtHostExitedError

__all__ = ["Signals"]

_log = logging.getLogger("pthost")

# Outgoing lines kept while nobody reads them; the oldest go first, as in
# pthost's own message queue (spec/ipc.md §6.4: delivery is unreliable by design).
QUEUE_LIMIT = 4096


class Signals:
    """Messages between a PT client and a PT server, as whole protocol lines.

    * ``send(message)`` delivers a line that came from the other side
      (``SMESSAGE ...`` to a client adapter, ``CMESSAGE ...`` to a server
      adapter) to this adapter's pthost.
    * Iterating yields the lines this adapter's pthost wrote for the other
      side; the iteration ends when pthost has exited and nothing is left.
    * ``on_message(callback)`` (or ``Signals(callback)``) calls
      ``callback(line)`` for each of them instead, on the adapter's reader
      thread; lines that arrived earlier are handed over first.
    """

    def __init__(self, callback: Callable[[str], None] | None = None):
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque(maxlen=QUEUE_LIMIT)
        self._callback = callback
        self._process = None
        self._started = False
        self._pending: list[str] = []
        self._ended = False

    # ------------------------------------------------------- the adapter side

    def _claim(self, process) -> None:
        """Serve ``process`` (about to start); lines sent meanwhile wait for :meth:`_flush_pending`."""
        with self._cond:
            if self._process is not None and not self._process.exited and self._process is not process:
                raise ValueError("this Signals object already serves a running pthost")
            self._process = process
            self._ended = False
            self._started = False

    def _flush_pending(self) -> None:
        """pthost runs: write the lines sent before it started."""
        with self._cond:
            self._started = True
            pending, self._pending = self._pending, []
        for line in pending:
            try:
                self.send(line)
            except ValueError as e:  # a line of the wrong kind, sent before the role was known
                _log.warning("pthost adapter: message dropped: %s", e)

    def _detach(self, process) -> None:
        with self._cond:
            if self._process is process:
                self._ended = True
                self._cond.notify_all()

    def _deliver(self, line: str) -> None:
        with self._cond:
            callback = self._callback
            if callback is None:
                self._queue.append(line)
                self._cond.notify_all()
                return
        try:
            callback(line)
        except Exception:
            _log.exception("pthost adapter: signals callback failed for %r", line[:80])

    @property
    def accepts(self) -> str | None:
        """The keyword :meth:`send` takes: ``SMESSAGE`` for a client, ``CMESSAGE`` for a server."""
        p = self._process
        if p is None:
            return None
        return "SMESSAGE" if p.role == "client" else "CMESSAGE"

    # --------------------------------------------------- the application side

    def send(self, message: str | bytes) -> None:
        """Deliver one line from the other side to this adapter's pthost (spec/ipc.md §4.10).

        Lines sent before pthost started are kept and written once it runs.
        A line of the wrong kind raises :class:`ValueError`; a line for a
        pthost that has exited is dropped (messages are unreliable by design,
        spec/ipc.md §6.6).
        """
        if isinstance(message, (bytes, bytearray)):
            message = bytes(message).decode("utf-8")
        line = message.rstrip("\r\n")
        if "\n" in line or "\r" in line:
            raise ValueError("a message is one line")
        keyword = line.split(" ", 1)[0]
        if keyword not in ("CMESSAGE", "SMESSAGE"):
            raise ValueError(f"not a CMESSAGE/SMESSAGE line: {line[:40]!r}")
        with self._cond:
            process = self._process
            if process is None or not self._started:
                self._pending.append(line)
                return
        if keyword != self.accepts:
            raise ValueError(f"a {process.role} adapter takes {self.accepts} lines, not {keyword}")
        try:
            process.write_line(line)
        except PtHostExitedError:
            _log.debug("pthost adapter: message dropped, pthost has exited")

    def on_message(self, callback: Callable[[str], None] | None) -> None:
        """Call ``callback(line)`` for every outgoing line (``None``: queue them again)."""
        with self._cond:
            self._callback = callback
            queued = list(self._queue) if callback is not None else []
            if callback is not None:
                self._queue.clear()
        for line in queued:
            self._deliver_to(callback, line)

    @staticmethod
    def _deliver_to(callback, line):
        try:
            callback(line)
        except Exception:
            _log.exception("pthost adapter: signals callback failed for %r", line[:80])

    def receive(self, timeout: float | None = None) -> str | None:
        """The next outgoing line; ``None`` after ``timeout`` seconds or once pthost has ended."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue or self._ended, timeout):
                return None
            return self._queue.popleft() if self._queue else None

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.receive()
            if line is None:
                return
            yield line

    def link(self, other: "Signals") -> None:
        """Carry this adapter's lines to ``other`` and ``other``'s to this one, in this process."""
        self.on_message(other.send)
        other.on_message(self.send)
