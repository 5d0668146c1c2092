"""Discovery: every DICOM file under a local path or an fsspec URL, headers only.

Files are recognised by content, not by extension. DICOMDIR files and every path component
that starts with ``_`` or ``.`` (below the given root) are skipped. Each file costs one
ranged read of its first :data:`HEADER_BYTES` bytes; the rest is fetched only when the
header is longer than that (rare: large private groups or embedded icons). Ranged reads go
through ``fs.cat_ranges`` (concurrent on object stores, no read-ahead buffer: s3fs file
objects otherwise read ahead 50 MiB by default).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calcpipe.dicom.errors import DicomInputError
from calcpipe.dicom.frames import parse_header_bytes
from calcpipe.ingest.headers import InstanceHeader, instance_header

#: Bytes fetched per file by the first (ranged) read.
HEADER_BYTES = 64 * 1024
#: Files whose first bytes are requested together (one concurrent batch on object stores).
BATCH_FILES = 256


@dataclass(frozen=True)
class SkippedFile:
    """A file discovery did not turn into a header row (INTERNAL: ``url`` may hold names)."""

    url: str
    code: str
    detail: str


@dataclass(frozen=True)
class HeaderScan:
    """What a scan found: header rows sorted by URL, and the files skipped with why."""

    headers: tuple[InstanceHeader, ...]
    skipped: tuple[SkippedFile, ...]


def open_filesystem(
    source: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> tuple[Any, str]:
    """The fsspec filesystem and root path for a local path or URL (s3fs imported lazily)."""
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(os.fspath(source), **dict(storage_options or {}))
    return fs, root


def list_candidates(fs: Any, root: str) -> list[tuple[str, dict[str, Any]]]:
    """Files under ``root`` (or ``root`` itself), sorted, without DICOMDIR and without any
    path component below ``root`` that starts with ``_`` or ``.``."""
    if fs.isfile(root):
        return [(root, fs.info(root))]
    found = fs.find(root, detail=True, withdirs=False)
    if not found:  # a typo or a missing mount must not look like a cohort with no studies
        raise DicomInputError(
            f"no files under {root}" + ("" if fs.exists(root) else ": it does not exist"),
            code="no_files", path=root, fix="check the source path or URL (and the mount)")
    prefix = root.rstrip("/") + "/"
    kept = []
    for path, info in found.items():
        relative = path[len(prefix):] if path.startswith(prefix) else path
        parts = relative.split("/")
        if any(p.startswith(("_", ".")) for p in parts) or parts[-1].upper() == "DICOMDIR":
            continue
        if info.get("type", "file") == "file":
            kept.append((path, info))
    return sorted(kept, key=lambda item: item[0])


def scan_headers(
    source: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> HeaderScan:
    """Read the header of every DICOM file under ``source``.

    Parameters
    ----------
    source : path or URL
        A local folder or file, or any fsspec URL (``s3://bucket/prefix``).
    storage_options : mapping, optional
        Passed to fsspec (e.g. ``{"client_kwargs": {"endpoint_url": ...}}`` for S3).

    Returns
    -------
    HeaderScan
        One :class:`InstanceHeader` per DICOM file (sorted by URL), and the files skipped
        (``not_dicom``, ``empty_file``, ``truncated``, ``unreadable``).
    """
    fs, root = open_filesystem(source, storage_options)
    return read_headers(fs, list_candidates(fs, root))


def read_headers(fs: Any, candidates: list[tuple[str, dict[str, Any]]]) -> HeaderScan:
    """Headers of the given ``(path, info)`` objects of ``fs`` (as :func:`list_candidates`
    gives them), in batches of :data:`BATCH_FILES` concurrent ranged reads."""
    headers: list[InstanceHeader] = []
    skipped: list[SkippedFile] = []
    for start in range(0, len(candidates), BATCH_FILES):
        batch = candidates[start:start + BATCH_FILES]
        sizes = [int(info.get("size") or 0) for _, info in batch]
        fetch = [i for i, size in enumerate(sizes) if size > 0]  # empty files: no request
        blobs: list[bytes | Exception] = [b""] * len(batch)
        got = fs.cat_ranges([batch[i][0] for i in fetch], [0] * len(fetch),
                            [min(sizes[i], HEADER_BYTES) for i in fetch], on_error="return")
        for i, blob in zip(fetch, got, strict=True):
            blobs[i] = blob
        for (path, info), blob in zip(batch, blobs, strict=True):
            url = _url(fs, path)
            result = _header(fs, path, url, info, blob)
            if isinstance(result, InstanceHeader):
                headers.append(result)
            else:
                skipped.append(result)
    return HeaderScan(tuple(headers), tuple(skipped))


def _header(
    fs: Any, path: str, url: str, info: dict[str, Any], blob: bytes | Exception
) -> InstanceHeader | SkippedFile:
    size = int(info.get("size") or 0)
    if isinstance(blob, Exception):
        return SkippedFile(url, "unreadable", f"cannot read the file: {blob}")
    data: bytes = blob
    try:
        parsed = parse_header_bytes(data, url, size=size)
        if parsed is None:  # the header runs past the first read: fetch the rest
            data = data + fs.cat_file(path, start=len(data))
            parsed = parse_header_bytes(data, url, size=size)
        if parsed is None:
            raise DicomInputError("the header could not be parsed", code="truncated",
                                  path=url)
        return instance_header(parsed.dataset, data[:parsed.pixel_offset], url=url,
                               size_bytes=size, etag=_etag(info), mtime=_mtime(info))
    except DicomInputError as e:
        return SkippedFile(url, e.code, e.message)
    except Exception as e:  # one corrupt header must not end the scan
        return SkippedFile(url, "invalid_attribute",
                           f"the header cannot be interpreted: {type(e).__name__}: {e}")


def _url(fs: Any, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def _etag(info: dict[str, Any]) -> str | None:
    etag = info.get("ETag") or info.get("etag")
    return str(etag).strip('"') if etag else None


def _mtime(info: dict[str, Any]) -> float | None:
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None
