"""ServerTransport: a free server with ``allow`` (createProxy) and bound servers (createServer)."""

import socket
import threading
import unittest

import pthost

from support import close_serving, require_pthost, wait_until


def plain_client(server, **kwargs):
    return pthost.TransportFactory(
        {"transports": ["plain"], "options": {"plain": {"serverAddress": "%s:%d" % server.address}}}, **kwargs)


class Listener:
    """The test's own TCP listener on 127.0.0.1:0, accepting in a thread and keeping what arrives."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = self.sock.getsockname()
        self.received = []
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                data = b""
                while chunk := conn.recv(4096):  # until the client ends its direction
                    data += chunk
                self.received.append(data)
                conn.sendall(b"listener saw " + data)

    def close(self):
        close_serving(self.sock)


def exchange(sock, data: bytes) -> bytes:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


class Servers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_pthost()

    def setUp(self):
        self.listener = Listener()
        self.addCleanup(self.listener.close)

    def test_free_server_reaches_allowed_destinations_and_refuses_others(self):
        with pthost.ServerTransport("plain").createProxy(options={"allow": [f"127.0.0.1:{self.listener.address[1]}"]}) as server, \
                plain_client(server) as client:
            transport = client.getConnectionFactory("plain")
            with transport.makeSocket() as sock:
                sock.connect(self.listener.address)
                self.assertEqual(exchange(sock, b"free"), b"listener saw free")
            # Another port on the same host is outside the allow entry: SOCKS reply 02.
            other = socket.socket()
            other.bind(("127.0.0.1", 0))
            self.addCleanup(other.close)
            with transport.makeSocket() as sock, self.assertRaises(PermissionError) as caught:
                sock.connect(other.getsockname())
            self.assertIsInstance(caught.exception, pthost.SocksNotAllowed)
            self.assertEqual(caught.exception.reply, 0x02)
            stats = server.getStats()
            self.assertEqual((stats["opened"], stats["failed"]), (1, 1))

    def test_bound_server_built_with_createServer_reaches_the_applications_listener(self):
        with pthost.ServerTransport("plain").createServer(target=self.listener.address) as server:
            # No serverAddress: the transport is bound, connect() names the PT server.
            with pthost.TransportFactory({"transports": ["plain"]}) as client:
                transport = client.getConnectionFactory("plain")
                self.assertTrue(transport.isBound())
                with transport.makeSocket() as sock:
                    sock.connect(server.address)
                    self.assertEqual(exchange(sock, b"bound"), b"listener saw bound")
            # With serverAddress the address is a destination, which a bound server ignores.
            with plain_client(server) as client, client.getConnectionFactory("plain").makeSocket() as sock:
                sock.connect(("192.0.2.1", 9))
                self.assertEqual(exchange(sock, b"anywhere"), b"listener saw anywhere")
        self.assertEqual(self.listener.received, [b"bound", b"anywhere"])

    def test_createServer_with_a_connectionListener_hands_over_each_session(self):
        arrived = []

        def on_connection(conn, address):
            with conn:
                data = conn.recv(100)
                arrived.append(data)
                conn.sendall(data.upper())

        with pthost.ServerTransport("plain").createServer(connectionListener=on_connection) as server, \
                plain_client(server) as client:
            self.assertIsNotNone(server.listener)
            with client.getConnectionFactory("plain").makeSocket() as sock:
                sock.connect(("0.0.0.0", 0))
                self.assertEqual(exchange(sock, b"hello"), b"HELLO")
        self.assertEqual(arrived, [b"hello"])

    def test_getStats_is_current_at_once_not_after_the_60_s_status_line(self):
        # pthost writes STATUS lines every 60 s; getStats() asks for them on stdin (spec/ipc.md §4.7).
        with pthost.ServerTransport("plain").createServer(target=self.listener.address) as server, \
                plain_client(server) as client:
            self.assertEqual(server.getStats(), {"transport": "plain", "connections": 0, "opened": 0,
                                                 "failed": 0, "bytes_in": 0, "bytes_out": 0})
            with client.getConnectionFactory("plain").makeSocket() as sock:
                sock.connect(("0.0.0.0", 0))
                # The client counts a session once its reply is written: current within one second.
                wait_until(lambda: (server.getStats()["connections"], client.getStats()["plain"]["connections"]) == (1, 1),
                           timeout=1.0, what="both sides to count the open session")
                reply = exchange(sock, b"x" * 1000)
                server_now, client_now = server.getStats(), client.getStats()["plain"]
            self.assertEqual((server_now["opened"], server_now["bytes_in"], server_now["bytes_out"]),
                             (1, 1000, len(reply)))
            self.assertEqual((client_now["opened"], client_now["bytes_in"], client_now["bytes_out"]),
                             (1, 1000, len(reply)))

if __name__ == "__main__":
    unittest.main()
