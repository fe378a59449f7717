"""The signals object: whole CMESSAGE/SMESSAGE lines out, lines of the other side's kind in."""

import json
import threading
import unittest

import pthost

from support import require_pthost


class SignalsObject(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_pthost()

    def test_output_is_whole_lines_and_iteration_ends_with_pthost(self):
        # plain's discover sends a hello at once (spec/plain.md §3).
        client = pthost.TransportFactory({"transports": ["plain"], "options": {"plain": {"discover": True}}})
        self.addCleanup(client.close)
        line = client.signals.receive(timeout=20)
        self.assertIsNotNone(line, "no CMESSAGE from the client")
        keyword, transport, payload = line.split(" ", 2)
        self.assertEqual((keyword, transport), ("CMESSAGE", "plain"))
        self.assertEqual(json.loads(payload)["kind"], "hello")
        rest = []
        reader = threading.Thread(target=lambda: rest.extend(client.signals))
        reader.start()
        client.close()
        reader.join(20)
        self.assertFalse(reader.is_alive(), "iteration did not end when pthost exited")

    def test_send_takes_the_other_sides_lines_only(self):
        with pthost.TransportFactory({"transports": ["plain"]}) as client:
            for bad in ("CMESSAGE plain {}", "STATUS", "SMESSAGE plain {}\nSMESSAGE plain {}"):
                with self.subTest(line=bad), self.assertRaises(ValueError):
                    client.signals.send(bad)
            client.signals.send('SMESSAGE plain {"v":1}\r\n')  # pthost drops what it cannot use
            self.assertEqual(client.getTransportNames(), ["plain"])

    def test_one_signals_object_serves_one_running_pthost(self):
        shared = pthost.Signals()
        with pthost.TransportFactory({"transports": ["plain"]}, signals=shared) as first:
            with self.assertRaises(ValueError):
                pthost.TransportFactory({"transports": ["plain"]}, signals=shared)
            self.assertIs(first.signals, shared)
        # Once that pthost has ended, the object can serve another.
        with pthost.TransportFactory({"transports": ["plain"]}, signals=shared) as second:
            self.assertEqual(second.getTransportNames(), ["plain"])


if __name__ == "__main__":
    unittest.main()
