"""Pluggable Transports 2.0 for Python applications, over the pthost IPC host.

The seed's interface (PT 2.0 draft 1 §3.2.6) with PEP 8 aliases beside each
name; spec/adapters.md in the PtHost repository maps every call onto pthost's
IPC (spec/ipc.md).

Client::

    factory = pthost.TransportFactory({"transports": ["plain"], ...})
    sock = factory.getConnectionFactory("plain").makeSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect((host, port))

Server::

    manager = pthost.ServerTransport("plain").createProxy(allow=["127.0.0.1"])
"""

from .client import AsyncPluggableTransport, PluggableTransport, TransportFactory, TransportSocket
from .errors import (ConfigurationError, PtHostDiedError, PtHostError, PtHostExitedError, SocksError,
                     SocksAddressTypeNotSupported, SocksCommandNotSupported, SocksConnectionRefused,
                     SocksGeneralFailure, SocksHostUnreachable, SocksMethodRefused, SocksNetworkUnreachable,
                     SocksNotAllowed, SocksSettingsInvalid, SocksSettingsNotParseable, SocksSettingsTimeout,
                     SocksSettingsTooLarge, SocksTimedOut, TransportStartError)
from .server import ServerManager, ServerTransport
from .signals import Signals
from .turn import TurnDatagramTransport, TurnError, TurnForbidden, TurnSocket

__version__ = "0.1.0"

__all__ = [
    "TransportFactory", "PluggableTransport", "AsyncPluggableTransport", "TransportSocket",
    "ServerTransport", "ServerManager", "Signals",
    "TurnDatagramTransport", "TurnSocket", "TurnError", "TurnForbidden",
    "PtHostError", "ConfigurationError", "TransportStartError", "PtHostExitedError", "PtHostDiedError",
    "SocksError", "SocksGeneralFailure", "SocksNotAllowed", "SocksNetworkUnreachable", "SocksHostUnreachable",
    "SocksConnectionRefused", "SocksTimedOut", "SocksCommandNotSupported", "SocksAddressTypeNotSupported",
    "SocksSettingsTooLarge", "SocksSettingsTimeout", "SocksSettingsNotParseable", "SocksSettingsInvalid",
    "SocksMethodRefused",
]
