"""A real threaded HTTP server on loopback serving one directory, for the tests."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable
from pathlib import Path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    disable_nagle_algorithm = True
    def log_message(self, format: str, *args) -> None:
        pass


class HandlerServer:
    """A real threaded HTTP server on 127.0.0.1 (a free port) answering with ``handler``."""

    def __init__(self, handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class LoopbackServer(HandlerServer):
    """A real threaded HTTP server on 127.0.0.1 serving one directory."""

    def __init__(self, directory: Path, handler: type = QuietHandler) -> None:
        self.directory = Path(directory)
        super().__init__(functools.partial(handler, directory=str(directory)))
