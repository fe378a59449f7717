"""UDP through the transport: the adapter's TURN client against pthost's TURN listener."""

import asyncio
import socket
import time
import unittest

import pthost

from support import UdpEcho, require_pthost

COUNT = 1000
WINDOW = 64          # datagrams in flight at once
RESEND_AFTER = 1.0   # a datagram unanswered this long is sent again (and counted)


class EchoCounter(asyncio.DatagramProtocol):
    """Sends COUNT numbered datagrams to the echo peer, WINDOW at a time, and counts the echoes."""

    def __init__(self, peer):
        self.peer = peer
        self.echoed = set()
        self.sent_at = {}
        self.resent = 0
        self.errors = []
        self.senders = set()
        self.done = asyncio.get_running_loop().create_future()
        self.transport = None
        self.next = 0

    def connection_made(self, transport):
        self.transport = transport
        self._fill()

    def _send(self, n):
        self.sent_at[n] = time.monotonic()
        self.transport.sendto(b"%06d" % n + bytes(200))

    def _fill(self):
        while self.next < COUNT and len(self.sent_at) < WINDOW:
            self._send(self.next)
            self.next += 1

    def datagram_received(self, data, addr):
        self.senders.add(addr)
        n = int(data[:6])
        if self.sent_at.pop(n, None) is not None:
            self.echoed.add(n)
        if len(self.echoed) == COUNT and not self.done.done():
            self.done.set_result(None)
        self._fill()

    def resend_stale(self):
        now = time.monotonic()
        for n, at in list(self.sent_at.items()):
            if now - at > RESEND_AFTER:
                self.resent += 1
                self._send(n)

    def error_received(self, exc):
        self.errors.append(exc)


class Udp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_pthost()

    def setUp(self):
        self.echo = UdpEcho()
        self.addCleanup(self.echo.close)
        # UDP to a loopback peer needs an allow entry inside 127.0.0.0/8 (spec/turn.md §6.1).
        self.server = pthost.ServerTransport("plain").createProxy(allow=["127.0.0.1"])
        self.addCleanup(self.server.close)
        self.client = pthost.TransportFactory(
            {"transports": ["plain"], "options": {"plain": {"serverAddress": "%s:%d" % self.server.address}}})
        self.addCleanup(self.client.close)
        self.transport = self.client.getConnectionFactory("plain")

    def test_1000_datagrams_are_echoed_over_TURN(self):
        self.assertIsNotNone(self.transport.turn_address, "the adapter adds the turn key")

        async def run():
            endpoint = self.transport.createAsyncTransport()
            transport, protocol = await endpoint.create_datagram_endpoint(
                lambda: EchoCounter(self.echo.address), remote_addr=self.echo.address)
            self.assertIsInstance(transport, asyncio.DatagramTransport)
            relayed = transport.get_extra_info("sockname")
            deadline = time.monotonic() + 60
            while not protocol.done.done():
                self.assertLess(time.monotonic(), deadline, f"{len(protocol.echoed)} of {COUNT} echoed")
                try:
                    await asyncio.wait_for(asyncio.shield(protocol.done), RESEND_AFTER)
                except asyncio.TimeoutError:
                    protocol.resend_stale()
            transport.close()
            return protocol, relayed

        protocol, relayed = asyncio.run(run())
        self.assertEqual(len(protocol.echoed), COUNT)
        self.assertEqual(protocol.senders, {self.echo.address})
        self.assertLessEqual(protocol.resent, COUNT // 100, "more than 1 % of the datagrams were lost")
        self.assertEqual(protocol.errors, [])
        self.assertEqual(relayed[0], "127.0.0.1")
        self.assertGreaterEqual(self.echo.count, COUNT)
        stats = self.client.getStats()["plain"]
        self.assertGreaterEqual(stats["opened"], 1)
        self.assertGreaterEqual(stats["bytes_in"], COUNT * 206)

    def test_sendto_without_remote_addr_binds_each_peer(self):
        second = UdpEcho()
        self.addCleanup(second.close)

        class Collect(asyncio.DatagramProtocol):
            def __init__(self):
                self.got = {}
                self.event = asyncio.Event()

            def datagram_received(self, data, addr):
                self.got[addr] = data
                if len(self.got) == 2:
                    self.event.set()

        async def run():
            transport, protocol = await self.transport.createAsyncTransport().create_datagram_endpoint(Collect)
            transport.sendto(b"one", self.echo.address)
            transport.sendto(b"two", second.address)
            await asyncio.wait_for(protocol.event.wait(), 30)
            transport.close()
            return protocol.got

        self.assertEqual(asyncio.run(run()), {self.echo.address: b"one", second.address: b"two"})

    def test_refused_peer_is_a_PermissionError(self):
        async def run():
            # 127.0.0.2 is loopback but not in the server's allow list: 403 (spec/turn.md §6.1).
            await self.transport.createAsyncTransport().create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=("127.0.0.2", 9))

        with self.assertRaises(PermissionError) as caught:
            asyncio.run(run())
        self.assertEqual(caught.exception.code, 403)

    def test_blocking_udp_socket_from_makeSocket(self):
        with self.transport.makeSocket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            self.assertIsInstance(sock, pthost.TurnSocket)
            sock.settimeout(10)
            for i in range(20):
                sock.sendto(b"ping %d" % i, self.echo.address)
                data, peer = sock.recvfrom(100)
                self.assertEqual((data, peer), (b"ping %d" % i, self.echo.address))
            self.assertEqual(sock.getsockname()[0], "127.0.0.1")


if __name__ == "__main__":
    unittest.main()
