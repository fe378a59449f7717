"""1 MiB HTTP fetches through the adapter's socket, checked with SHA-256 (plain, zephyr)."""

import asyncio
import hashlib
import http.client
import socket
import unittest

import pthost

from support import BODY_SHA256, WebServer, ZephyrRelay, carry, http_get, require_pthost


class HttpFetch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_pthost()
        cls.web = WebServer()

    @classmethod
    def tearDownClass(cls):
        cls.web.close()

    def test_plain_free_server_fetches_1_MiB_through_makeSocket(self):
        with pthost.ServerTransport("plain").createProxy(allow=["127.0.0.1"]) as server, \
                pthost.TransportFactory({"transports": ["plain"],
                                         "options": {"plain": {"serverAddress": "%s:%d" % server.address}}}) as client:
            transport = client.getConnectionFactory("plain")
            self.assertFalse(transport.isBound(), "with serverAddress the connect address is the destination")
            sock = transport.makeSocket(socket.AF_INET, socket.SOCK_STREAM)
            self.assertIsInstance(sock, socket.socket)
            with sock:
                sock.connect(self.web.address)
                body = http_get(sock)
            self.assertEqual(len(body), 1 << 20)
            self.assertEqual(hashlib.sha256(body).hexdigest(), BODY_SHA256)

    def test_plain_discover_with_linked_signals_fetches_through_http_client(self):
        # The client learns the server's address from SMESSAGE lines (spec/plain.md §3):
        # the two adapters' signals are linked in this process.
        server_signals, client_signals = pthost.Signals(), pthost.Signals()
        server_signals.link(client_signals)
        with pthost.ServerTransport("plain").createProxy(None, None, server_signals, {"allow": ["127.0.0.1"]}) as server, \
                pthost.TransportFactory({"transports": ["plain"], "options": {"plain": {"discover": True}}},
                                        signals=client_signals) as client:
            transport = client.getConnectionFactory("plain")
            conn = http.client.HTTPConnection(*self.web.address, timeout=30)
            conn.sock = transport.makeSocket(socket.AF_INET, socket.SOCK_STREAM)
            conn.sock.settimeout(30)
            conn.sock.connect(self.web.address)
            conn.request("GET", "/demo.bin")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            self.assertEqual(response.status, 200)
            self.assertEqual(hashlib.sha256(body).hexdigest(), BODY_SHA256)
            self.assertEqual(server.getStats()["opened"], 1)

    def test_asyncio_open_connection_fetches_1_MiB(self):
        with pthost.ServerTransport("plain").createProxy(allow=["127.0.0.1"]) as server, \
                pthost.TransportFactory({"transports": ["plain"],
                                         "options": {"plain": {"serverAddress": "%s:%d" % server.address}}}) as client:
            transport = client.getConnectionFactory("plain")

            async def fetch():
                reader, writer = await transport.createAsyncTransport().open_connection(*self.web.address)
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                response = await reader.read()
                writer.close()
                await writer.wait_closed()
                return response

            head, _, body = asyncio.run(fetch()).partition(b"\r\n\r\n")
            self.assertIn(b" 200 ", head.split(b"\r\n")[0])
            self.assertEqual(hashlib.sha256(body).hexdigest(), BODY_SHA256)

    def test_zephyr_through_a_relay_with_signals_carried_by_the_test(self):
        relay = ZephyrRelay()
        self.addCleanup(relay.close)
        server_transport = pthost.ServerTransport("zephyr")
        generated = server_transport.generateConfiguration()
        self.assertEqual(set(generated), {"client", "server"})
        server_options = dict(generated["server"], relay=relay.address)
        client_options = dict(generated["client"], relay=relay.address)
        # A bound server: every session reaches the web server (the application's listener).
        with server_transport.createServer(server_options, target=self.web.address) as server, \
                pthost.TransportFactory({"transports": ["zephyr"], "options": {"zephyr": client_options}}) as client:
            self.assertIn("pin", server.args)
            # The application carries the lines itself: zephyr.offer one way, zephyr.answer back.
            carry(client.signals, server.signals)
            carry(server.signals, client.signals)
            transport = client.getConnectionFactory("zephyr")
            self.assertFalse(transport.isBound())
            with transport.makeSocket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(60)
                sock.connect(("0.0.0.0", 0))  # unspecified: the bound server's target
                body = http_get(sock)
            self.assertEqual(hashlib.sha256(body).hexdigest(), BODY_SHA256)
            stats = client.getStats()["zephyr"]
            self.assertEqual(stats["opened"], 1)
            self.assertGreaterEqual(stats["bytes_out"], 1 << 20)


if __name__ == "__main__":
    unittest.main()
