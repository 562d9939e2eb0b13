"""Answers GET / with a greeting (the first argument, default `hello`) and a token drawn at
start, so that a restart can be told from the process before it. Listens on port 8000 of the
sandbox; cave.yaml forwards the host's 127.0.0.1:8080 to it."""

import http.server
import os
import sys

GREETING = sys.argv[1] if len(sys.argv) > 1 else "hello"
STARTED = os.urandom(8).hex()


class Greeter(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%s %s" % (GREETING, STARTED)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


print("serving on port 8000", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), Greeter).serve_forever()
