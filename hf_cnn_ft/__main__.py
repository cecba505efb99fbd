"""`python -m hf_cnn_ft` (also what `accelerate launch -m hf_cnn_ft` runs)."""

from hf_cnn_ft.cli.main import run

run()
