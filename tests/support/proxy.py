"""A prefix-stripping reverse proxy, as the README's nginx example is:

    location /stemd/ { proxy_pass http://127.0.0.1:8750/; ... proxy_buffering off; }

A request for PREFIX/rest goes to the upstream as /rest, with X-Forwarded-Host
(the name and port the browser used), X-Forwarded-Proto and X-Forwarded-Prefix;
PREFIX without its slash is redirected to PREFIX/ (nginx does the same for such a
location); anything else is 404, as nginx would answer it from its own root.
Answers stream through as they come (server-sent events, Range answers, zips),
and the proxy counts the bytes of each answer's body it passed on, by path, so a
test can tell what a page fetched.
"""

from __future__ import annotations

import http.client
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# hop-by-hop headers (RFC 9110 7.6.1): the proxy's own business on each side
HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
UPSTREAM_TIMEOUT_S = 120.0
BLOCK = 64 << 10
BODY_KEPT = 64 << 10


class PrefixProxy:
    """The proxy on 127.0.0.1 and a free port, serving until `stop()`."""

    def __init__(self, upstream: str, prefix: str = "/stemd") -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self.prefix = prefix.rstrip("/")
        self._lock = threading.Lock()
        self._sent: dict[str, int] = defaultdict(int)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self.bodies: list[tuple[str, bytes]] = []  # (path, the first 64 KiB) of each body
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True  # an open event stream must not hold stop()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        """The page's address through the proxy, slash included."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}/"

    def start(self) -> PrefixProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def sent(self, path_start: str) -> int:
        """Body bytes passed to clients for upstream paths starting with this."""
        with self._lock:
            return sum(n for path, n in self._sent.items() if path.startswith(path_start))

    def reset(self) -> None:
        with self._lock:
            self._sent.clear()
            self.requests.clear()
            self.bodies.clear()

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self._sent[path] += n

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: pytest shows the test's own output

            def do_GET(self) -> None:
                self._forward()

            do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

            def _forward(self) -> None:
                path = self.path
                if path == proxy.prefix or path.startswith(proxy.prefix + "?"):
                    self._plain(
                        301, "", {"Location": proxy.prefix + "/" + path[len(proxy.prefix) :]}
                    )
                    return
                if not path.startswith(proxy.prefix + "/"):
                    self._plain(404, "not behind the proxy's prefix\n", {})
                    return
                upstream_path = path[len(proxy.prefix) :]
                with proxy._lock:
                    proxy.requests.append(
                        (self.command, upstream_path, self.headers.get("Range", ""))
                    )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                headers["X-Forwarded-Host"] = self.headers.get("Host", "")
                headers["X-Forwarded-Proto"] = "http"
                headers["X-Forwarded-Prefix"] = proxy.prefix
                headers["X-Forwarded-For"] = self.client_address[0]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if body:
                    with proxy._lock:
                        proxy.bodies.append((upstream_path, body[:BODY_KEPT]))
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=UPSTREAM_TIMEOUT_S)
                try:
                    try:
                        upstream.request(self.command, upstream_path, body=body, headers=headers)
                        answer = upstream.getresponse()
                    except OSError as err:  # as nginx says it: the upstream is not there
                        self._plain(502, f"upstream: {err}\n", {})
                        return
                    self.send_response_only(answer.status, answer.reason)
                    for key, value in answer.getheaders():
                        if key.lower() not in HOP:
                            self.send_header(key, value)
                    # the body as it comes: close-delimited unless its length is known
                    if answer.getheader("Content-Length") is None:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    while chunk := answer.read1(BLOCK):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        proxy._count(upstream_path.split("?")[0], len(chunk))
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the browser stopped reading: a media range
                finally:
                    upstream.close()

            def _plain(self, status: int, text: str, extra: dict[str, str]) -> None:
                data = text.encode()
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
