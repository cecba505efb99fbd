"""Does horizontal-flip test-time augmentation help? Test accuracy with and without it, per seed.

Trains each recipe (the offline food recipes by default) once per seed, then classifies the fixed test
split with the plain evaluation transform and with the average of the image's and its mirror image's
probabilities. Prints the figures (recorded by hand in RESULTS.md: it was tried and rejected).

    python benchmarks/flip_tta.py recipes/food-mobilenetv2.yaml recipes/food-efficientnet-lite0.yaml --seeds 2
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from hf_cnn_ft.data import LABEL_COLUMN, load_image_data
from hf_cnn_ft.evaluation import predict_scores
from hf_cnn_ft.models import load_model
from hf_cnn_ft.recipe import load_recipe
from hf_cnn_ft.train import train
from hf_cnn_ft.transforms import eval_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_flush_denormal(True)
    for recipe_path in args.recipes:
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as out:
                recipe = load_recipe(recipe_path, ["--output_dir", out, "--seed", str(seed), "--disable_tqdm", "true"])
                train(recipe)
                model, data_config = load_model(out)
                test = load_image_data(recipe.data).splits["test"]
                plain = eval_transform(data_config)
                mirrored = v2.Compose([v2.RandomHorizontalFlip(1.0), plain])
                probabilities = [torch.tensor(predict_scores(model, test, t)).softmax(-1) for t in (plain, mirrored)]
            labels = np.asarray(test[LABEL_COLUMN])
            without = float((probabilities[0].argmax(-1).numpy() == labels).mean())
            with_flip = float((((probabilities[0] + probabilities[1]) / 2).argmax(-1).numpy() == labels).mean())
            print(f"{recipe_path.name} seed {seed}: test accuracy {without:.3f}, with flip TTA {with_flip:.3f}")


if __name__ == "__main__":
    main()
