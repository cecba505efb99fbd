"""hf-cnn-ft: fine-tune pretrained CNNs on your own images with the Hugging Face stack."""

from hf_cnn_ft.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
