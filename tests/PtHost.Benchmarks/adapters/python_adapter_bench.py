"""The Python side of the adapter-python benchmark (Scenarios/PythonAdapterScenario.cs).

Driven by the harness through stdin commands, one JSON line answered on stdout each:
  startup HOST:PORT          a new TransportFactory, its first connection (to HOST:PORT), close
  open                       a TransportFactory kept for the streams; answers its SOCKS address
  upload HOST:PORT BYTES     BYTES through a makeSocket socket in 128 KiB sendall blocks, then EOF
  download HOST:PORT         read a makeSocket socket to its end with recv_into (256 KiB buffer)
The pthost client's configuration is the harness's own plain client's (Chain.StartClientAsync),
so its start-up can be compared with pthost's own.
"""

import json
import os
import socket
import sys
import time

t_import = time.perf_counter()
import pthost  # noqa: E402

IMPORT_MS = (time.perf_counter() - t_import) * 1000
SEND_BLOCK = 128 * 1024
RECV_BLOCK = 256 * 1024


def address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def configuration(server):
    return {"transports": ["plain"], "options": {"plain": {"serverAddress": server}}}


def say(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def startup(server, target):
    t0 = time.perf_counter()
    factory = pthost.TransportFactory(configuration(server), turn=False)
    t_done = time.perf_counter()
    sock = factory.getConnectionFactory("plain").makeSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.connect(target)
    t_conn = time.perf_counter()
    sock.close()
    factory.close()
    t_closed = time.perf_counter()
    say(startup_ms=(t_done - t0) * 1000, first_connection_ms=(t_conn - t0) * 1000,
        close_ms=(t_closed - t_conn) * 1000)


def upload(transport, target, total):
    block = memoryview(os.urandom(SEND_BLOCK))
    with transport.makeSocket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.connect(target)
        t0 = time.perf_counter()
        left = total
        while left > 0:
            n = min(left, SEND_BLOCK)
            sock.sendall(block[:n])
            left -= n
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):  # the sink closes once it has read everything
            pass
        say(sent=total, seconds=time.perf_counter() - t0)


def download(transport, target):
    buf = bytearray(RECV_BLOCK)
    with transport.makeSocket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.connect(target)
        n = sock.recv_into(buf)
        t0 = time.perf_counter()
        total = n
        while n:
            n = sock.recv_into(buf)
            total += n
        say(received=total, seconds=time.perf_counter() - t0)


def main():
    server = sys.argv[1]
    factory = None
    say(ready=True, import_ms=IMPORT_MS, python=sys.version.split()[0])
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "startup":
            startup(server, address(cmd[1]))
        elif cmd[0] == "open":
            factory = pthost.TransportFactory(configuration(server), turn=False)
            host, port = factory.getConnectionFactory("plain").socks_address
            say(socks=f"{host}:{port}", pid=factory.pid)
        elif cmd[0] == "upload":
            upload(factory.getConnectionFactory("plain"), address(cmd[1]), int(cmd[2]))
        elif cmd[0] == "download":
            download(factory.getConnectionFactory("plain"), address(cmd[1]))
        else:
            say(error=f"unknown command {cmd[0]}")
    if factory is not None:
        factory.close()


if __name__ == "__main__":
    main()
