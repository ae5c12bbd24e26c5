"""A restoring network exported to ONNX and run by ONNX Runtime on CPUs: numpy in, numpy out, no
torch. No Ray here.

CPU actors restore with it by default (fp32, and int8): a process that runs only this network never
imports torch, about 1 CPU-second of start-up and 220 MB of memory less per actor (this project's
CPU). What :mod:`carray.restore` needs to know of the network (its channels, receptive radius,
whether it takes the JPEG quality) is read from the metadata the exporter writes into the file
(:func:`carray.export.export_onnx`), so the model file itself (a torch pickle) is not loaded.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

from .quality import DEFAULT_SUBSAMPLING


class OnnxNetwork:
    """An ONNX Runtime session with the attributes :mod:`carray.restore` reads (`args`,
    `receptive_radius`, `takes_quality`) and :meth:`run_numpy`, which it calls instead of a PyTorch
    forward pass."""

    def __init__(self, onnx_bytes: bytes, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "carray_args" not in meta or "carray_receptive_radius" not in meta:
            raise ValueError("not a carray network: its ONNX file lacks the carray_args / carray_receptive_radius metadata")
        self.args = json.loads(meta["carray_args"])
        self.receptive_radius = int(meta["carray_receptive_radius"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.takes_quality = "quality" in inputs
        # A network that also sees the chroma coding takes (n, 3) codings, the others (n,) qualities.
        self.takes_coding = self.takes_quality and len(inputs["quality"].shape) == 2

    def run_numpy(self, x: np.ndarray, quality: Optional[np.ndarray] = None) -> np.ndarray:
        """float32 (n, c, h, w) on [0, 1] -> the restored batch, same shape, clamped to [0, 1]."""
        feeds = {"image": np.ascontiguousarray(x, dtype=np.float32)}
        if self.takes_quality:
            q = np.asarray(quality if quality is not None else np.full(len(x), 50.0), np.float32)
            if self.takes_coding and q.ndim == 1:  # only the luma quality known: libjpeg's default coding
                q = np.stack([q, q, np.full_like(q, DEFAULT_SUBSAMPLING)], axis=1)
            elif not self.takes_coding and q.ndim == 2:
                q = np.ascontiguousarray(q[:, 0])
            feeds["quality"] = q
        return self.session.run(None, feeds)[0]
