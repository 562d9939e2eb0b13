"""A web-ish worker: a job queue whose jobs are HTTP requests to a server on the sandbox's own
loopback. It serves exactly as many requests as it sends, writes the results to /workspace (the
only writable place: /project is read-only) and exits by itself."""

import http.server
import json
import os
import pathlib
import queue
import sys
import threading
import urllib.request


class SumHandler(http.server.BaseHTTPRequestHandler):
    """POST /jobs with {"id": N, "numbers": [...]} answers {"job": N, "sum": ...}."""

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        job = json.loads(self.rfile.read(length))
        body = json.dumps({"job": job["id"], "sum": sum(job["numbers"])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        # The worker prints the answers; the server's access log would only repeat them.
        pass


def run_jobs(jobs):
    """Serves len(jobs) requests on 127.0.0.1 and sends each job to it; returns the answers."""
    server = http.server.HTTPServer(("127.0.0.1", 0), SumHandler)
    port = server.server_address[1]

    def serve():
        for _ in jobs:
            server.handle_request()

    serving = threading.Thread(target=serve)
    serving.start()
    # No proxy: the server is on this machine's (or sandbox's) own loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    pending = queue.Queue()
    for job in jobs:
        pending.put(job)
    answers = []
    while not pending.empty():
        job = pending.get()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/jobs",
            data=json.dumps(job).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with opener.open(request, timeout=10) as response:
            answers.append(json.loads(response.read()))
    serving.join()
    server.server_close()
    return answers


def main():
    count = int(os.environ.get("JOBS", "3"))
    jobs = [{"id": n, "numbers": list(range(n + 1))} for n in range(1, count + 1)]
    answers = run_jobs(jobs)
    out_dir = pathlib.Path(os.environ.get("RESULTS_DIR", "/workspace"))
    out = out_dir / "results.json"
    out.write_text(json.dumps(answers, indent=2) + "\n")
    for answer in answers:
        print(f"job {answer['job']}: sum {answer['sum']}")
    print(f"saved {len(answers)} results to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
