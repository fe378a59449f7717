"""Exceptions of the adapter (spec/adapters.md §2.6).

Every exception the adapter raises for pthost's own reasons derives from
:class:`PtHostError`; those that describe a failed connection also derive from
the built-in :class:`OSError` subclass an application already catches.
"""

from __future__ import annotations

import errno
import re

__all__ = [
    "PtHostError",
    "ConfigurationError",
    "TransportStartError",
    "PtHostExitedError",
    "PtHostDiedError",
    "SocksError",
    "SocksGeneralFailure",
    "SocksNotAllowed",
    "SocksNetworkUnreachable",
    "SocksHostUnreachable",
    "SocksConnectionRefused",
    "SocksTimedOut",
    "SocksCommandNotSupported",
    "SocksAddressTypeNotSupported",
    "SocksSettingsTooLarge",
    "SocksSettingsTimeout",
    "SocksSettingsNotParseable",
    "SocksSettingsInvalid",
    "SocksMethodRefused",
    "socks_error",
]


class PtHostError(Exception):
    """Base of the adapter's own errors."""


class ConfigurationError(PtHostError, ValueError):
    """pthost refused its configuration (exit 78, spec/ipc.md §3.3, §4.2).

    ``str(e)`` is pthost's stderr line (``pthost: config key 'K': ...``);
    ``key`` is the key it names (``None`` when it names none), ``line`` the
    stdout line (``ENV-ERROR ...``/``VERSION-ERROR ...``), ``exit_code`` the
    exit status.
    """

    def __init__(self, message: str, *, key: str | None = None, line: str | None = None,
                 exit_code: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.key = key
        self.line = line
        self.exit_code = exit_code
        self.stderr = stderr

    @staticmethod
    def key_of(text: str) -> str | None:
        m = re.search(r"config key '([^']*)'", text)
        return m.group(1) if m else None


class TransportStartError(PtHostError):
    """A transport did not start: a ``CMETHOD-ERROR``/``SMETHOD-ERROR`` line (spec/ipc.md §4.4)."""

    def __init__(self, transport: str, reason: str, errors: dict[str, str] | None = None):
        super().__init__(f"transport {transport} did not start: {reason}")
        self.transport = transport
        self.reason = reason
        self.errors = dict(errors or {transport: reason})


class PtHostExitedError(PtHostError):
    """The pthost process is gone (or was never usable): what the factory reports.

    ``exit_code`` is its status (negative: killed by that signal), ``stderr``
    the last lines it wrote there.
    """

    def __init__(self, message: str, *, exit_code: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.stderr = stderr


class PtHostDiedError(ConnectionResetError, PtHostError):
    """Raised by an open transport socket whose pthost process has exited."""

    def __init__(self, message: str = "pthost exited: the transport connection is gone"):
        super().__init__(errno.ECONNRESET, message)


class SocksError(OSError):
    """A SOCKS5 failure reply from pthost's front end (spec/ipc.md §5.6).

    ``reply`` is the reply code (``None`` when pthost refused the method
    selection). The concrete class is chosen from the code by
    :func:`socks_error`; each also derives from the built-in exception with
    the same meaning.
    """

    reply: int | None = None
    default_errno = errno.EIO

    def __init__(self, message: str, reply: int | None = None):
        super().__init__(self.default_errno, message)
        self.reply = reply


class SocksGeneralFailure(SocksError, ConnectionAbortedError):
    """01: general failure (transport I/O error, server closed before answering)."""
    default_errno = errno.ECONNABORTED


class SocksNotAllowed(SocksError, PermissionError):
    """02: not allowed by ruleset (a free server's ``allow`` list)."""
    default_errno = errno.EACCES


class SocksNetworkUnreachable(SocksError):
    """03: network unreachable."""
    default_errno = errno.ENETUNREACH


class SocksHostUnreachable(SocksError):
    """04: host unreachable (also: name not found, no server address)."""
    default_errno = errno.EHOSTUNREACH


class SocksConnectionRefused(SocksError, ConnectionRefusedError):
    """05: connection refused."""
    default_errno = errno.ECONNREFUSED


class SocksTimedOut(SocksError, TimeoutError):
    """06: TTL expired / timed out."""
    default_errno = errno.ETIMEDOUT


class SocksCommandNotSupported(SocksError):
    """07: command not supported."""
    default_errno = errno.EOPNOTSUPP


class SocksAddressTypeNotSupported(SocksError):
    """08: address type not supported."""
    default_errno = errno.EAFNOSUPPORT


class SocksSettingsTooLarge(SocksError):
    """10 (hex): the settings block is larger than 65,536 bytes."""
    default_errno = errno.EMSGSIZE


class SocksSettingsTimeout(SocksError, TimeoutError):
    """11 (hex): the settings block did not arrive in time."""
    default_errno = errno.ETIMEDOUT


class SocksSettingsNotParseable(SocksError):
    """12 (hex): the settings block is not strict JSON."""
    default_errno = errno.EINVAL


class SocksSettingsInvalid(SocksError):
    """13 (hex): the transport rejected a setting."""
    default_errno = errno.EINVAL


class SocksMethodRefused(SocksError, ConnectionRefusedError):
    """pthost answered the greeting ``05 FF``: no acceptable method."""
    default_errno = errno.EPROTO


_BY_REPLY: dict[int, tuple[type[SocksError], str]] = {
    0x01: (SocksGeneralFailure, "general failure"),
    0x02: (SocksNotAllowed, "not allowed by ruleset"),
    0x03: (SocksNetworkUnreachable, "network unreachable"),
    0x04: (SocksHostUnreachable, "host unreachable"),
    0x05: (SocksConnectionRefused, "connection refused"),
    0x06: (SocksTimedOut, "timed out"),
    0x07: (SocksCommandNotSupported, "command not supported"),
    0x08: (SocksAddressTypeNotSupported, "address type not supported"),
    0x10: (SocksSettingsTooLarge, "settings too large"),
    0x11: (SocksSettingsTimeout, "settings timeout"),
    0x12: (SocksSettingsNotParseable, "settings not parseable"),
    0x13: (SocksSettingsInvalid, "settings invalid"),
}


def socks_error(reply: int, transport: str, destination: str) -> SocksError:
    """The exception for SOCKS reply code ``reply`` (spec/adapters.md §2.6)."""
    cls, text = _BY_REPLY.get(reply, (SocksGeneralFailure, "unknown reply code"))
    return cls(f"{transport}: {destination}: SOCKS reply 0x{reply:02x} ({text})", reply)
