"""``speechforge export``: a trained run as ONNX graphs a torch-free runtime can decode with
(``speechforge.runtime``). ``export_onnx`` writes the folder ``speechforge.runtime.bundle``
describes."""

from speechforge.export.writer import export_onnx

__all__ = ["export_onnx"]
