"""Real peers for the adapter's tests: a web server, a UDP echo, a zephyr relay, waiting helpers.

Every port comes from binding port 0 or from a line pthost prints; every wait
is for a condition, with a deadline.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import socket
import subprocess
import sys
import threading
import time

PTHOST = os.environ.get("PTHOST_EXE")
HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps")
BODY = random.Random(20261207).randbytes(1 << 20)
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


def require_pthost():
    if not PTHOST or not os.access(PTHOST, os.X_OK):
        raise RuntimeError("PTHOST_EXE must name the published pthost (dotnet publish src/PtHost -o out)")
    return PTHOST


def wait_until(condition, timeout=20.0, what="condition"):
    """Poll ``condition()`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def process_state(pid: int) -> str | None:
    """The /proc state letter, ``None`` when the pid no longer exists."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return data[data.rindex(b")") + 2:].split()[0].decode()


def process_gone(pid: int) -> bool:
    """Not running: absent, or a zombie left for its new parent (init) to reap."""
    return process_state(pid) in (None, "Z", "X")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


class WebServer:
    """An HTTP/1.1 server on 127.0.0.1:0 answering any GET with the 1 MiB ``BODY``."""

    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def http_get(sock, host="localhost") -> bytes:
    """GET / over a connected socket (HTTP/1.0, read to the end): the body."""
    sock.sendall(f"GET /demo.bin HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    chunks = []
    while True:
        data = sock.recv(256 * 1024)
        if not data:
            break
        chunks.append(data)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status:
        raise AssertionError(f"HTTP status {status!r}")
    return body


class UdpEcho:
    """A UDP echo socket on 127.0.0.1:0 with a 4 MiB receive buffer."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:
                return
            if addr is None:  # shut down
                return
            self.count += 1
            self.sock.sendto(data, addr)

    def close(self):
        close_serving(self.sock)


def close_serving(sock):
    """Close a socket a thread is blocked on: shutdown wakes its recvfrom/accept on Linux."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class ZephyrRelay:
    """``pthost relay zephyr --listen 127.0.0.1:0``; its address from the ``LISTEN`` line."""

    def __init__(self):
        self.proc = subprocess.Popen([require_pthost(), "relay", "zephyr", "--listen", "127.0.0.1:0"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 3 or line[0] != "LISTEN":
            self.close()
            raise RuntimeError(f"zephyr relay did not start: {line}")
        self.address = line[2]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def carry(source, sink):
    """Carry every message line from one adapter's signals to the other's, as an application
    would: a thread that ends when the source's pthost has exited."""
    def run():
        for line in source:
            sink.send(line)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def run_app(mode: str, state: str, **kwargs) -> subprocess.Popen:
    """A small application process using the installed adapter (same interpreter)."""
    return subprocess.Popen([sys.executable, os.path.join(APPS, "app.py"), mode, state],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
