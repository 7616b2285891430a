"""A real HTTP server on loopback standing in for a Slack incoming webhook: it answers each POST
as Slack does ("ok") and keeps the JSON payloads for tests to read."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Webhook:
    def __init__(self, url: str):
        self.url = url
        self.posts: list[dict] = []
        self.content_types: list[str] = []


@contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    """The webhook's URL and what was POSTed to it, while the server listens."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hook.content_types.append(self.headers.get("Content-Type", ""))
            hook.posts.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook = Webhook(f"http://127.0.0.1:{server.server_port}/services/T000/B000/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
