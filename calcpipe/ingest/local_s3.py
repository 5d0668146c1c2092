"""A local S3-compatible server (moto) for tests, benchmarks and demos.

moto's in-process mocks patch botocore but not aiobotocore, which s3fs uses; a real HTTP
server on 127.0.0.1 works for both. Needs the ``dev`` extra (``moto[server]``), imported
lazily.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LocalS3:
    """A moto S3 server on 127.0.0.1 (a free port); use as a context manager.

    ``storage_options`` are the fsspec options that reach it (dummy credentials).
    """

    server: Any = field(default=None, repr=False)
    endpoint_url: str = ""

    def __enter__(self) -> LocalS3:
        from moto.server import ThreadedMotoServer

        # werkzeug logs every request to stderr; a test server needs only errors
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options for ``s3://`` URLs served here."""
        return {"key": "testing", "secret": "testing", "skip_instance_cache": True,
                "client_kwargs": {"endpoint_url": self.endpoint_url}}

    def filesystem(self) -> Any:
        """An s3fs filesystem on this server."""
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)

    def upload(self, folder: str | os.PathLike[str], url: str) -> str:
        """Copy a local folder to ``s3://bucket/prefix`` (the bucket is created); returns
        the URL."""
        fs = self.filesystem()
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        root = os.fspath(folder)
        for dirpath, _, names in os.walk(root):
            for name in names:
                local = os.path.join(dirpath, name)
                relative = os.path.relpath(local, root).replace(os.sep, "/")
                fs.put_file(local, f"{url.rstrip('/')}/{relative}")
        fs.invalidate_cache()
        return url


class FlakyProxy:
    """An HTTP proxy in front of an S3 endpoint that answers every ``every``-th request
    with ``503 SlowDown`` instead of forwarding it (transient-fault injection for tests).

    Use as a context manager; ``endpoint_url`` is the proxy's, ``injected`` counts faults.
    """

    def __init__(self, target: str, every: int = 5) -> None:
        self.target = target.rstrip("/")
        self.every = every
        self.requests = 0
        self.injected = 0
        self.endpoint_url = ""
        self._server: Any = None

    def __enter__(self) -> FlakyProxy:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        proxy = self
        target = urlsplit(self.target)
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    proxy.requests += 1
                    fail = proxy.requests % proxy.every == 0
                    proxy.injected += fail
                if fail:
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown'
                               b"</Code><Message>Please reduce your request rate.</Message>"
                               b"</Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port,
                                                        timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
