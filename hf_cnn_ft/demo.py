"""The offline demo: fine-tune on generated shape images, with no download at all."""

from __future__ import annotations

import logging
from pathlib import Path

from .cli import format_report
from .recipe import build_recipe
from .synthetic import make_shapes_folder
from .train import train

logger = logging.getLogger(__name__)

DEMO_SETTINGS = {
    "model": "test_resnet",  # timm's tiny ResNet; random init, since no weights can be fetched offline
    "pretrained": False,
    "image_size": 48,
    "num_train_epochs": 8,
    "learning_rate": 3e-3,
    "per_device_train_batch_size": 16,
}


def run_demo(output_dir: Path, data_dir: Path = Path("data/demo-shapes")) -> None:
    if not data_dir.exists():
        logger.info("writing demo images to %s", data_dir)
        make_shapes_folder(data_dir, per_class=60)
    recipe = build_recipe({"dataset": str(data_dir), "output_dir": str(output_dir), **DEMO_SETTINGS}, "demo")
    result = train(recipe)
    print(format_report(result.report, f"\ndemo: {result.evaluated_on} results ({result.report['num_samples']} images)"))
    print(f"  train time       {result.train_seconds:.1f} s")
    print(f"\nmodel card:       {output_dir / 'README.md'}")
    print(f"confusion matrix: {output_dir / 'confusion_matrix.png'}")
