"""Exports for deployment: a run's classifier in the runtime a device runs (ONNX, OpenVINO, ExecuTorch,
LiteRT), checked against PyTorch, and loaded back by `predict` and `evaluate` with that runtime."""
