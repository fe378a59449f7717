"""Errors map onto Python's: bad configuration, a transport that does not start, SOCKS failure
replies, and a pthost that dies under open sockets."""

import asyncio
import os
import signal
import socket
import unittest

import pthost

from support import UdpEcho, require_pthost, wait_until


class Errors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_pthost()

    def test_bad_configuration_raises_with_pthosts_message_and_key(self):
        with self.assertRaises(pthost.ConfigurationError) as caught:
            pthost.TransportFactory({"transports": ["plain"], "bogus": 1})
        e = caught.exception
        self.assertEqual(e.exit_code, 78)
        self.assertEqual(e.key, "bogus")
        self.assertTrue(str(e).startswith("pthost: config key 'bogus': unknown key"), str(e))
        self.assertTrue(e.line.startswith("ENV-ERROR config key 'bogus'"), e.line)
        self.assertIsInstance(e, ValueError)

    def test_bad_server_configuration_names_the_key(self):
        with self.assertRaises(pthost.ConfigurationError) as caught:
            pthost.ServerTransport("plain").createProxy(allow=["127.1"])  # not a strict dotted quad
        self.assertEqual(caught.exception.key, "allow")
        self.assertIn("config key 'allow'", str(caught.exception))

    def test_transport_that_does_not_start_names_transport_and_reason(self):
        # zephyr without options cannot start: SMETHOD-ERROR, and no transport left (exit 69).
        with self.assertRaises(pthost.TransportStartError) as caught:
            pthost.ServerTransport("zephyr").createProxy(allow=["127.0.0.1"])
        self.assertEqual(caught.exception.transport, "zephyr")
        self.assertIn("clientPins", caught.exception.reason)
        self.assertIn("zephyr", str(caught.exception))

    def test_one_failed_transport_of_several_is_reported_by_getConnectionFactory(self):
        with pthost.TransportFactory({"transports": ["plain", "nosuch"]}) as client:
            self.assertEqual(client.getTransportNames(), ["plain"])
            with self.assertRaises(pthost.TransportStartError) as caught:
                client.getConnectionFactory("nosuch")
            self.assertEqual(caught.exception.transport, "nosuch")
            self.assertIn('no transport named "nosuch"', caught.exception.reason)

    def test_socks_failure_replies_map_to_OSError_subclasses(self):
        refusing = socket.socket()
        refusing.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        self.addCleanup(refusing.close)
        with pthost.ServerTransport("plain").createProxy(allow=["127.0.0.1"]) as server, \
                pthost.TransportFactory({"transports": ["plain"],
                                         "options": {"plain": {"serverAddress": "%s:%d" % server.address}}}) as client:
            transport = client.getConnectionFactory("plain")
            cases = [
                (refusing.getsockname(), None, ConnectionRefusedError, 0x05),
                (("127.0.0.2", 80), None, PermissionError, 0x02),
                (("127.0.0.1", 80), {"bogus": 1}, pthost.SocksSettingsInvalid, 0x13),
            ]
            for address, settings, expected, code in cases:
                with self.subTest(code=code), transport.makeSocket(settings=settings) as sock:
                    with self.assertRaises(expected) as caught:
                        sock.connect(address)
                    self.assertEqual(caught.exception.reply, code)
                    self.assertIsInstance(caught.exception, OSError)
            with transport.makeSocket() as sock:
                self.assertEqual(sock.connect_ex(refusing.getsockname()), 111)  # ECONNREFUSED

    def test_killed_pthost_errors_every_open_socket_and_the_factory_reports_it(self):
        echo = UdpEcho()
        self.addCleanup(echo.close)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        server = pthost.ServerTransport("plain").createServer(target=listener.getsockname())
        self.addCleanup(server.close)
        self.addCleanup(listener.close)  # first: the sessions still queued on it end at once
        client = pthost.TransportFactory(
            {"transports": ["plain"], "options": {"plain": {"serverAddress": "%s:%d" % server.address}}})
        self.addCleanup(client.close)
        reports = []
        client.add_exit_callback(reports.append)
        transport = client.getConnectionFactory("plain")
        blocking = transport.makeSocket()
        blocking.connect(("0.0.0.0", 0))
        blocking.sendall(b"before")
        self.addCleanup(blocking.close)
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)

        async def run():
            lost = asyncio.get_running_loop().create_future()

            class Stream(asyncio.Protocol):
                def connection_lost(self, exc):
                    lost.set_result(exc)

            class Datagrams(asyncio.DatagramProtocol):
                def connection_lost(self, exc):
                    dlost.set_result(exc)

            dlost = asyncio.get_running_loop().create_future()
            async_transport = transport.createAsyncTransport()
            await async_transport.create_connection(Stream, "0.0.0.0", 0)
            await async_transport.create_datagram_endpoint(Datagrams, remote_addr=echo.address)
            os.kill(client.pid, signal.SIGKILL)
            return await asyncio.wait_for(lost, 20), await asyncio.wait_for(dlost, 20)

        stream_error, datagram_error = asyncio.run(run())
        self.assertIsInstance(stream_error, pthost.PtHostDiedError)
        self.assertIsInstance(datagram_error, pthost.PtHostDiedError)
        with self.assertRaises(pthost.PtHostDiedError):
            blocking.recv(100)
        with self.assertRaises(ConnectionResetError):
            blocking.sendall(b"after")
        wait_until(lambda: reports, what="the factory's exit callback")
        self.assertIsInstance(reports[0], pthost.PtHostExitedError)
        self.assertEqual(reports[0].exit_code, -signal.SIGKILL)
        self.assertIs(client.error, reports[0])
        with self.assertRaises(pthost.PtHostExitedError):
            transport.makeSocket()
        with self.assertRaises(pthost.PtHostExitedError):
            client.getStats()

    def test_killed_server_pthost_is_reported_by_its_manager(self):
        server = pthost.ServerTransport("plain").createProxy(allow=["127.0.0.1"])
        self.addCleanup(server.close)
        os.kill(server.pid, signal.SIGKILL)
        wait_until(lambda: server.error is not None, what="the manager to see pthost's end")
        self.assertEqual(server.error.exit_code, -signal.SIGKILL)
        with self.assertRaises(pthost.PtHostExitedError):
            server.getStats()


if __name__ == "__main__":
    unittest.main()
