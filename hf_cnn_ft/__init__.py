"""hf-cnn-ft: fine-tune pretrained CNNs on your own images with the Hugging Face stack.

The Python API (`hf_cnn_ft.api`), imported on first use so that `import hf_cnn_ft` stays cheap:

    from hf_cnn_ft import Recipe, evaluate, load_model, predict, prepare_cpu_process, train
"""

from hf_cnn_ft.errors import UserError

__version__ = "0.1.0"

_API = ("Recipe", "TrainResult", "Prediction", "train", "evaluate", "predict", "load_model", "prepare_cpu_process")

__all__ = ["UserError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from hf_cnn_ft import api

        return getattr(api, name)
    raise AttributeError(f"module 'hf_cnn_ft' has no attribute {name!r}")
