"""Weights written straight to a graph's external-data file, one tensor at a time.

Why: a large part (the 2.2B decoder is 6.8 GB in fp32) must never be held whole in memory as protobuf; the graph
keeps only references (location, offset, length). Offsets are page-aligned so ONNX Runtime can map them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper


class ExternalWeights:
    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 (held until close())

    def add(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        """Append `array`'s bytes and return an initializer that refers to them."""
        array = np.ascontiguousarray(array)
        offset = self._file.seek(0, 2)
        pad = -offset % 4096
        self._file.write(b"\0" * pad)
        self._file.write(memoryview(array).cast("B"))
        tensor = onnx.TensorProto(
            name=name,
            data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
            dims=array.shape,
            data_location=onnx.TensorProto.EXTERNAL,
        )
        for key, value in (("location", self.path.name), ("offset", str(offset + pad)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ExternalWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
