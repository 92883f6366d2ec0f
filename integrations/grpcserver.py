"""The lab's gRPC server, run inside the namespace: `python -m integrations.grpcserver ADDR PORT`.

/lab.Lab/Ok answers at once; /lab.Lab/Hang never answers (it holds the call until the
client goes away), as a backend stuck on a slow dependency would. No protobuf: requests
and responses are raw bytes. The server welcomes client PINGs as often as every second,
with or without calls (a default gRPC server would send GOAWAY too_many_pings to a
client pinging every 2 s: see kapatch/adapters/grpc.py).
"""

from __future__ import annotations

import sys
import threading
from concurrent import futures

import grpc

PERMISSIVE = [
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
]
_forever = threading.Event()


def identity(data: bytes) -> bytes:
    return data


def ok(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"ok"


def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
    while context.is_active():  # returns once the client has gone (cancelled or dead)
        _forever.wait(1.0)
    return b""


def main() -> None:
    addr, port = sys.argv[1], int(sys.argv[2])
    server = grpc.server(futures.ThreadPoolExecutor(32), options=PERMISSIVE)
    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(ok, identity, identity),
        "Hang": grpc.unary_unary_rpc_method_handler(hang, identity, identity),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("lab.Lab", handlers),))
    server.add_insecure_port(f"{addr}:{port}")
    server.start()
    print(f"grpc listening on {addr}:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
