"""The run directory, the model card, the Hub and ONNX export."""
