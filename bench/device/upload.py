"""Step a's check of a GPU actor's kept buffers: a 12 MP photo's upload from a pinned kept buffer
(carray.ondevice.pinned_host_buffer, what a restoring actor on CUDA decodes into) against one from
pageable memory (copied into pinned memory first), in wall and CPU ms per MP. Prints `UPLOAD {json}`.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

SHAPE = (3000, 4000, 3)  # a 12 MP colour photo, as decoded
ROUNDS = 10


def upload_ms_per_mp(pixels: np.ndarray, device: torch.device) -> dict:
    from carray.ondevice import _upload

    _upload(pixels, device)
    torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(ROUNDS):
        _upload(pixels, device)
        torch.cuda.synchronize()
    per_mp = 1e3 / ROUNDS / (pixels.size / 3 / 1e6)
    return {"wall_ms_per_mp": (time.perf_counter() - wall) * per_mp, "cpu_ms_per_mp": (time.process_time() - cpu) * per_mp}


def main() -> dict:
    if not torch.cuda.is_available():
        return {"upload": "no CUDA here"}
    from carray.infer.memory import PixelBuffers
    from carray.ondevice import pinned_host_buffer

    device = torch.device("cuda")
    kept = PixelBuffers(new_buffer=pinned_host_buffer).array(SHAPE)
    pageable = np.empty(SHAPE, np.uint8)
    kept[:] = pageable[:] = 7
    return {"upload": {"kept_buffer_is_pinned": bool(torch.from_numpy(kept).is_pinned()),
                       "pinned_kept_buffer": upload_ms_per_mp(kept, device), "pageable": upload_ms_per_mp(pageable, device)}}


if __name__ == "__main__":
    print("UPLOAD " + json.dumps(main()), flush=True)
