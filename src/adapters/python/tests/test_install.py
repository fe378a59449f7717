"""The package under test is the installed one (pip install into the test venv), not the source tree."""

import os
import sys
import sysconfig
import unittest

import pthost


class InstalledPackage(unittest.TestCase):
    def test_pthost_is_imported_from_the_venv_site_packages(self):
        site = os.path.realpath(sysconfig.get_paths()["purelib"])
        where = os.path.realpath(os.path.dirname(pthost.__file__))
        self.assertTrue(where.startswith(site + os.sep), f"pthost imported from {where}, not {site}")
        source = os.environ.get("PTHOST_ADAPTER_SOURCE")
        if source:
            self.assertFalse(where.startswith(os.path.realpath(source) + os.sep),
                             "pthost was imported from the source tree")
        self.assertNotEqual(sys.prefix, sys.base_prefix, "the tests run in a virtual environment")

    def test_seed_names_and_pep8_aliases_are_the_same_functions(self):
        pairs = [
            (pthost.TransportFactory, "getTransportNames", "get_transport_names"),
            (pthost.TransportFactory, "getConnectionFactory", "get_connection_factory"),
            (pthost.PluggableTransport, "getTransportName", "get_transport_name"),
            (pthost.PluggableTransport, "getProxyConfiguration", "get_proxy_configuration"),
            (pthost.PluggableTransport, "isBound", "is_bound"),
            (pthost.PluggableTransport, "makeSocket", "make_socket"),
            (pthost.PluggableTransport, "createAsyncTransport", "create_async_transport"),
            (pthost.ServerTransport, "generateConfiguration", "generate_configuration"),
            (pthost.ServerTransport, "createServer", "create_server"),
            (pthost.ServerTransport, "createProxy", "create_proxy"),
            (pthost.ServerManager, "getStats", "get_stats"),
        ]
        for cls, seed, alias in pairs:
            self.assertIs(getattr(cls, seed), getattr(cls, alias), f"{cls.__name__}.{alias}")
        for name in ("configure", "__call__"):
            self.assertTrue(callable(getattr(pthost.PluggableTransport, name)))
        for name in ("create_connection", "create_datagram_endpoint"):
            self.assertTrue(callable(getattr(pthost.AsyncPluggableTransport, name)))


if __name__ == "__main__":
    unittest.main()
