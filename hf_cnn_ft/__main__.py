"""`python -m hf_cnn_ft` (also what `accelerate launch -m hf_cnn_ft` runs)."""

import sys

from hf_cnn_ft.cli.main import main

sys.exit(main())
