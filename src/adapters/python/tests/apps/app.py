"""An application using the adapter, for the no-orphan tests (tests/test_lifecycle.py).

It starts a PT server and a PT client, prints their pthost pids as one JSON line,
then, by mode:
  exit   - returns from main without closing anything (the atexit hook must end them);
  raise  - dies of an unhandled exception (atexit too);
  wait   - blocks reading stdin until the test kills it (SIGKILL: stdin closes under pthost).
"""

import json
import os
import sys

import pthost


def main(mode: str, state: str) -> None:
    # State directories the test owns: a killed application cannot remove private ones.
    server = pthost.ServerTransport("plain").createProxy(local=os.path.join(state, "server"), allow=["127.0.0.1"])
    client = pthost.TransportFactory(
        {"transports": ["plain"], "options": {"plain": {"serverAddress": "%s:%d" % server.address}}},
        local=os.path.join(state, "client"))
    print(json.dumps({"server": server.pid, "client": client.pid}), flush=True)
    if mode == "raise":
        raise RuntimeError("app: ending with an unhandled exception")
    if mode == "wait":
        sys.stdin.buffer.read()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
