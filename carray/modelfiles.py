"""Which model, from where, checked how: the one place jobs find model files. No Ray here.

A job either names a model file (``--model``, a local path or s3:// URI) or uses the models shipped
in the package (``carray/models/gray.pt`` and ``color.pt``). Files are read and checked on the
driver, before any work starts, and travel to workers as bytes: a worker on another node needs no
access to the driver's disk. Every error names the file as the user gave it.
"""
from __future__ import annotations

from importlib import resources
from typing import Optional

from torch import nn

from . import storage
from .model import ModelFileError, load_model_bytes
from .storage import S3Options

SHIPPED_KINDS = ("gray", "color")


def shipped_path(kind: str):
    """The packaged model file for 'gray' or 'color' (an importlib resource)."""
    return resources.files("carray") / "models" / f"{kind}.pt"


def read_model_file(location: str, s3: Optional[S3Options] = None) -> bytes:
    """The bytes of a model file at a local path or s3:// URI, checked to load.
    Raises ModelFileError naming `location`."""
    try:
        fs, path = storage.resolve(location, s3)
        data = storage.read_bytes(fs, path)
    except (OSError, storage.StorageError) as exc:
        raise ModelFileError(f"{location}: cannot read the model file ({exc})") from None
    load_model_bytes(data, location)
    return data


def load_model(location: str, s3: Optional[S3Options] = None) -> tuple[nn.Module, dict]:
    """(model in eval mode, its training record) from a local path or s3:// URI."""
    return load_model_bytes(read_model_file(location, s3), location)


def shipped_model_files() -> dict[str, bytes]:
    """The models in the package: {'gray': bytes, 'color': bytes} (those present)."""
    found = {kind: shipped_path(kind).read_bytes() for kind in SHIPPED_KINDS if shipped_path(kind).is_file()}
    if not found:
        raise ModelFileError("no model shipped in the package (carray/models/*.pt); pass --model PATH")
    return found


def model_files(location: Optional[str], s3: Optional[S3Options] = None) -> dict[str, bytes]:
    """Model bytes by the kind of image they restore ('gray' or 'color'): the shipped pair, or the
    one file at `location` under the kind its channel count says (images of the other kind then
    go through it too: see restore.restore_pixels)."""
    if location is None:
        files = shipped_model_files()
        for kind, data in files.items():
            load_model_bytes(data, f"shipped {kind} model ({shipped_path(kind)})")
        return files
    data = read_model_file(location, s3)
    model, _ = load_model_bytes(data, location)
    return {"color" if model.args.get("channels") == 3 else "gray": data}


def single_model_file(location: Optional[str], color: bool, s3: Optional[S3Options] = None) -> bytes:
    """The one model a single-mode job needs (evaluate, export): the file at `location`, or the
    shipped model for the mode (colour when `color`)."""
    if location:
        return read_model_file(location, s3)
    kind = "color" if color else "gray"
    shipped = shipped_model_files()
    if kind not in shipped:
        raise ModelFileError(f"no shipped {kind} model in the package; pass --model PATH")
    load_model_bytes(shipped[kind], f"shipped {kind} model ({shipped_path(kind)})")
    return shipped[kind]
