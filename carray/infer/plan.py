"""Per key, no global state: the output's name, why a key is skipped, whether it is done. No Ray here."""
from __future__ import annotations

import pyarrow as pa

from .. import storage
from ..images import IMAGE_EXTENSIONS, OUTPUT_FORMATS
from .layout import Locations
from .packs import PLAN_TYPES, to_packs

SKIP_EXISTS = "output exists (--overwrite restores it again)"
SKIP_HIDDEN = "hidden: a folder or file name starts with '.' (--include-hidden restores it)"
SKIP_OUTSIDE = "key leaves the input: an absolute path or a '..' component (never read, never written)"
SKIP_NOT_IMAGE = "not an image file name (" + " ".join(IMAGE_EXTENSIONS) + ", any case)"


def output_name(relative_path: str, fmt: str) -> str:
    """The output's relative path: the input's own path plus the format's extension
    (photo.jpg -> photo.jpg.jpg with the default --format jpeg). One input, one output, decided by the row alone: a.jpg and
    a.png can never write the same file, whatever else the collection holds. A multi-picture file
    stays one as a JPEG output (its other images are kept), so it keeps its own extension:
    stereo.mpo -> stereo.mpo.mpo."""
    if fmt == "jpeg" and relative_path.lower().endswith(".mpo"):
        return relative_path + ".mpo"
    return relative_path + OUTPUT_FORMATS[fmt][1]


def passed_name(relative_path: str, restored_name: str) -> str:
    """The output's relative path of an input passed through unchanged (its own bytes): its own
    path (photo.jpg -> photo.jpg), so a collection's untouched files sit where they were. Except a
    path that itself looks like a restored output (photo.jpg.png, with --format png): that one takes
    the restored naming rule (photo.jpg.png.png), so no two inputs ever share an output whichever way
    each is treated."""
    ext = restored_name[len(relative_path):]
    looks_restored = relative_path.endswith(ext) and relative_path[: -len(ext)].lower().endswith(IMAGE_EXTENSIONS)
    return restored_name if looks_restored else relative_path


def skip_reason(relative_path: str, include_hidden: bool = False) -> str:
    """Why a key is not restored at all ("" when it is a candidate)."""
    if leaves_root(relative_path):
        return SKIP_OUTSIDE
    if not include_hidden and any(part.startswith(".") for part in relative_path.split("/")):
        return SKIP_HIDDEN
    if not relative_path.lower().endswith(IMAGE_EXTENSIONS):
        return SKIP_NOT_IMAGE
    return ""


def leaves_root(relative_path: str) -> bool:
    """A key that, joined to the input or output root, would name a path outside it (a manifest's
    '../x.jpg' or '/etc/x.jpg')."""
    return relative_path.startswith("/") or ".." in relative_path.split("/")


def plan_keys(table: pa.Table, *, fmt: str, where: Locations, overwrite: bool, include_hidden: bool) -> pa.Table:
    """map_batches stage: packs of keys -> packs of (path, output, skipped). "Already done" is
    decided here, per row, by looking for the row's own output (on a bucket one HEAD per name)."""
    packs = []
    for keys in table.column("key").to_pylist():
        paths = [str(k) for k in keys]
        outputs = [output_name(p, fmt) for p in paths]
        skipped = [skip_reason(p, include_hidden) for p in paths]
        if not overwrite:  # done: restored, or passed through under its own name
            candidates = [i for i, reason in enumerate(skipped) if not reason]
            names = [(i, name) for i in candidates for name in dict.fromkeys((outputs[i], passed_name(paths[i], outputs[i])))]
            found = storage.files_exist(where.dst_fs, [where.output_path(name) for _, name in names])
            for (i, _), done in zip(names, found):
                if done:
                    skipped[i] = SKIP_EXISTS
        packs.append([{"path": p, "output": o, "skipped": s} for p, o, s in zip(paths, outputs, skipped)])
    return to_packs(packs, PLAN_TYPES)
