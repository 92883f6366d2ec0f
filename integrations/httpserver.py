"""The lab's HTTP server, run inside the namespace: `python -m integrations.httpserver ADDR PORT`.

GET /ok answers at once (HTTP/1.1, keep-alive, so clients pool the connection);
GET /hang reads the request and never answers: it holds the connection until the client
closes it, as an upstream stuck on a slow query would.
"""

from __future__ import annotations

import select
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/ok"):
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/hang"):
            # Never answer; return only when the client goes away (EOF or error).
            while True:
                readable, _, _ = select.select([self.connection], [], [], 60.0)
                if readable:
                    try:
                        if not self.connection.recv(4096):
                            break
                    except OSError:
                        break
            self.close_connection = True
            return
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> None:
    addr, port = sys.argv[1], int(sys.argv[2])
    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    print(f"listening on {addr}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
