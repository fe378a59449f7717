"""No orphan pthost: the child ends on close(), on a context manager's exit, at interpreter exit
(atexit) and when the application is SIGKILLed (its stdin closes; exit-on-stdin-close)."""

import json
import os
import signal
import tempfile
import unittest

import pthost

from support import process_gone, process_state, require_pthost, run_app, wait_until


def plain_server():
    return pthost.ServerTransport("plain").createProxy(allow=["127.0.0.1"])


def plain_client(server):
    return pthost.TransportFactory(
        {"transports": ["plain"], "options": {"plain": {"serverAddress": "%s:%d" % server.address}}})


class NoOrphans(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_pthost()

    def assertRunning(self, pid):
        self.assertNotIn(process_state(pid), (None, "Z", "X"), f"pthost {pid} is not running")

    def assertEnds(self, pid, what):
        wait_until(lambda: process_gone(pid), timeout=20, what=f"pthost {pid} to end after {what}")

    def test_close_ends_pthost(self):
        server = plain_server()
        client = plain_client(server)
        pids = (server.pid, client.pid)
        for pid in pids:
            self.assertRunning(pid)
        client.close()
        server.close()
        for pid in pids:
            self.assertEnds(pid, "close()")
        self.assertIsNone(client.error, "an ordered close is not an error")

    def test_context_manager_exit_ends_pthost(self):
        with plain_server() as server, plain_client(server) as client:
            pids = (server.pid, client.pid)
            for pid in pids:
                self.assertRunning(pid)
        for pid in pids:
            self.assertEnds(pid, "the with block")

    def test_interpreter_exit_ends_pthost(self):
        for mode in ("exit", "raise"):
            with self.subTest(mode=mode):
                state = self.enterContext(tempfile.TemporaryDirectory())
                app = run_app(mode, state)
                pids = json.loads(app.stdout.readline())
                out, err = app.communicate(timeout=30)
                app.stdout.close()
                app.stderr.close()
                app.stdin.close()
                self.assertEqual(app.returncode, 0 if mode == "exit" else 1, err.decode())
                for pid in pids.values():
                    # atexit waited for them: gone by the time the application has exited.
                    self.assertTrue(process_gone(pid), f"pthost {pid} outlived the interpreter ({mode})")

    def test_sigkill_of_the_application_ends_pthost(self):
        app = run_app("wait", self.enterContext(tempfile.TemporaryDirectory()))
        self.addCleanup(app.stdin.close)
        self.addCleanup(app.stderr.close)
        self.addCleanup(app.stdout.close)
        pids = json.loads(app.stdout.readline())
        for pid in pids.values():
            self.assertRunning(pid)
        os.kill(app.pid, signal.SIGKILL)
        app.wait(10)
        for pid in pids.values():
            self.assertEnds(pid, "SIGKILL of the application")


if __name__ == "__main__":
    unittest.main()
