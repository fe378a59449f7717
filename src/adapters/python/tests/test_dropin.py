"""A transport as a drop-in for socket.socket (the seed's __call__), and the transport socket's
socket behaviour."""

import hashlib
import http.client
import socket
import unittest

import pthost

from support import BODY_SHA256, WebServer, require_pthost


class DropIn(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_pthost()
        cls.web = WebServer()
        cls.server = pthost.ServerTransport("plain").createProxy(allow=["127.0.0.1"])
        cls.client = pthost.TransportFactory(
            {"transports": ["plain"], "options": {"plain": {"serverAddress": "%s:%d" % cls.server.address}}})
        cls.transport = cls.client.getConnectionFactory("plain")

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.close()
        cls.web.close()

    def test_socket_socket_replaced_by_the_transport_carries_http_client(self):
        original = socket.socket
        socket.socket = self.transport
        try:
            conn = http.client.HTTPConnection(*self.web.address, timeout=30)
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read()
            via = type(conn.sock)
            conn.close()
        finally:
            socket.socket = original
        self.assertIs(via, pthost.TransportSocket)
        self.assertEqual(response.status, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), BODY_SHA256)
        self.assertEqual(self.server.getStats()["opened"], self.client.getStats()["plain"]["opened"])

    def test_call_takes_socket_socket_arguments_and_descriptors_stay_plain(self):
        sock = self.transport(family=socket.AF_INET, type=socket.SOCK_STREAM, proto=0)
        self.assertIsInstance(sock, pthost.TransportSocket)
        sock.close()
        other = socket.socket()
        plain = self.transport(socket.AF_INET, socket.SOCK_STREAM, 0, other.detach())
        self.assertIs(type(plain), socket.socket)
        plain.close()

    def test_after_the_handshake_the_socket_is_the_kernels(self):
        with self.transport.makeSocket() as sock:
            sock.connect(self.web.address)
            self.assertEqual(sock.getpeername(), self.web.address)
            self.assertEqual(sock.get_proxy_peername(), self.transport.socks_address)
            self.assertEqual(self.transport.getProxyConfiguration(), "socks5://%s:%d" % self.transport.socks_address)
            # A socket built around the same descriptor carries the bytes without the adapter.
            raw = socket.socket(fileno=sock.detach())
        with raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with raw.makefile("rb") as f:
                status = f.readline()
                body = f.read().partition(b"\r\n\r\n")[2]
        self.assertIn(b" 200 ", status)
        self.assertEqual(hashlib.sha256(body).hexdigest(), BODY_SHA256)


if __name__ == "__main__":
    unittest.main()
