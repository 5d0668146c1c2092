"""Model checkpoints: weights plus everything needed to use and audit them.

A checkpoint (``torch.save`` of plain types, loadable with ``weights_only=True``) records:
format, network config, class names, HU transform, model spacing, training description
(data, seeds, epochs, hash of the training data specification), metrics and the code
version. The shipped default lives in ``calcpipe/models/weights/default.pt`` with its
SHA-256 in ``default.sha256``; loading verifies it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

FORMAT = "calcpipe-unet/1"


@dataclass(frozen=True)
class Checkpoint:
    path: str
    model_id: str
    sha256: str
    payload: dict[str, Any]


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_path() -> Path:
    return Path(str(files("calcpipe.models").joinpath("weights", "default.pt")))


def resolve(model: str | Path) -> tuple[Path, str]:
    """A checkpoint path and model id for ``"default"`` or a path."""
    if str(model) == "default":
        return default_path(), "calcpipe-default"
    return Path(model), Path(model).stem


def load_checkpoint(model: str | Path = "default") -> Checkpoint:
    """Load and verify a checkpoint (the shipped default's checksum must match)."""
    import torch

    path, model_id = resolve(model)
    if not path.is_file():
        raise FileNotFoundError(
            f"model checkpoint {path} not found; pass --model PATH or install calcpipe with "
            "its shipped weights")
    checksum = sha256_of(path)
    if str(model) == "default":
        expected = path.with_suffix(".sha256").read_text().split()[0]
        if checksum != expected:
            raise ValueError(f"shipped model {path} has checksum {checksum}, expected "
                             f"{expected}: the file is damaged; reinstall calcpipe")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's errors for a file that is no checkpoint say little
        raise ValueError(f"{path} is not a {FORMAT} checkpoint: torch cannot load it "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from e
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format {found!r})")
    return Checkpoint(str(path), model_id, checksum, payload)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> str:
    """Write a checkpoint and return its SHA-256."""
    import torch

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**payload, "format": FORMAT}, out)
    return sha256_of(out)
