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
