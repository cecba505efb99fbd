"""Every export format, registered on import: one module per runtime."""

from hf_cnn_ft.share.exports.runtimes import executorch_format, litert_format, onnx_format, openvino_format

__all__ = ["executorch_format", "litert_format", "onnx_format", "openvino_format"]
