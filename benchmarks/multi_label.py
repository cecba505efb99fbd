"""Multi-label on real photos (issue 34): mosaics of food photos, each labelled with every food group it shows.

No multi-label image set installs here, so one is made, and said plainly to be made: a mosaic is a 2x2 grid of
the food photos of `hf-cnn-ft data food` (squashed to 112 px tiles, 224 px in all) drawn from one to three of the
six food groups, and its labels are the groups it shows. For each of `--splits` resampled splits the photos are
first split by group (60% / 15% / 25%), so that no photo of a test mosaic is in a training or validation one;
then `--mosaics` training mosaics (a quarter as many for validation, and for test) are drawn from each part.

On each split: the shipped multi-label recipe (`recipes/food-mosaics-multilabel-efficientnet-lite0.yaml`), and a
one-vs-rest logistic-regression probe on the same frozen EfficientNet-Lite0 features (scikit-learn, its C chosen
on the validation mosaics' mAP, thresholds fitted on them as the recipe's are). Test mAP and macro-F1 with 95%
intervals over the splits, and the paired difference. Goal: the recipe beats the probe's mAP by 3 points.

    hf-cnn-ft data food && hf-cnn-ft import-weights --known efficientnet_lite0
    python benchmarks/multi_label.py --splits 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
from common import record  # benchmarks/ is on the path as a script
from sklearn.linear_model import LogisticRegression

from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.data.dataset import split_targets
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.evaluation.intervals import mean_interval, paired_difference
from hf_cnn_ft.evaluation.multi_label import fit_thresholds, multi_label_report
from hf_cnn_ft.extras.mosaics import mosaic_splits, photos_by_folder
from hf_cnn_ft.models.build import build_model
from hf_cnn_ft.strategies.probe import pooled_features
from hf_cnn_ft.training.machine import prepare_cpu_process
from hf_cnn_ft.training.train import train

RECIPE = Path("recipes/food-mosaics-multilabel-efficientnet-lite0.yaml")
FOOD = Path("data/food")
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


def mosaic_dataset(photos: dict[str, list[Path]], seed: int, count: int, root: Path) -> Path:
    """The mosaics of one resampled split, saved as a dataset with its three splits."""
    folder = root / f"mosaics-{seed}"
    mosaic_splits(photos, seed, count).save_to_disk(str(folder))
    return folder


def probe_baseline(folder: Path, out: Path) -> dict[str, float]:
    """One-vs-rest logistic regression on the recipe's frozen backbone features."""
    recipe = load_recipe(RECIPE, values={"dataset": str(folder), "output_dir": str(out)})
    splits = datasets.load_from_disk(str(folder))
    names = splits["train"].features["label"].feature.names
    model, data_config = build_model(recipe.model, names, None, multi_label=True)
    transform = eval_transform(data_config)
    features = {s: pooled_features(model, splits[s], transform, 64).numpy() for s in splits}
    targets = {s: split_targets(splits[s]) for s in splits}

    def scores(c: float, split: str) -> np.ndarray:
        columns = []
        for label in range(len(names)):
            fit = LogisticRegression(C=c, max_iter=3000).fit(features["train"], targets["train"][:, label])
            columns.append(fit.decision_function(features[split]))
        return np.stack(columns, axis=1)

    best = max(C_GRID, key=lambda c: multi_label_report(scores(c, "validation"), targets["validation"], names)["map"])
    thresholds = fit_thresholds(scores(best, "validation"), targets["validation"])
    report = multi_label_report(scores(best, "test"), targets["test"], names, thresholds)
    return {"map": report["map"], "f1_macro": report["f1_macro"], "accuracy": report["accuracy"], "C": best}


def measure(args: argparse.Namespace, root: Path) -> dict[str, list[dict[str, float]]]:
    groups = photos_by_folder(FOOD)
    found: dict[str, list[dict[str, float]]] = {"recipe": [], "probe": []}
    for seed in range(args.splits):
        folder = mosaic_dataset(groups, seed, args.mosaics, root)
        out = root / f"run-{seed}"
        started = time.perf_counter()
        result = train(
            load_recipe(RECIPE, values={"dataset": str(folder), "output_dir": str(out), "disable_tqdm": True})
        )
        seconds = time.perf_counter() - started
        report = result.report
        found["recipe"].append({key: report[key] for key in ("map", "f1_macro", "accuracy")} | {"seconds": seconds})
        found["probe"].append(probe_baseline(folder, root / f"probe-{seed}"))
        print(seed, found["recipe"][-1], found["probe"][-1], flush=True)
    return found


def table(found: dict[str, list[dict[str, float]]]) -> str:
    splits = list(range(len(found["recipe"])))

    def interval(name: str, key: str) -> str:
        return str(mean_interval([run[key] for run in found[name]], splits))

    def paired(key: str) -> str:
        values = [run[key] for run in found["recipe"]]
        return str(paired_difference(values, [run[key] for run in found["probe"]], splits))

    seconds = np.mean([run["seconds"] for run in found["recipe"]])
    chosen = sorted({run["C"] for run in found["probe"]})
    return "\n".join(
        [
            "| | test mAP | test macro-F1 (thresholds fitted on validation) | test subset accuracy |",
            "|---|---|---|---|",
            f"| shipped recipe ({seconds:.0f} s per run) | {interval('recipe', 'map')} | "
            f"{interval('recipe', 'f1_macro')} | {interval('recipe', 'accuracy')} |",
            f"| one-vs-rest logistic regression, frozen features (C {', '.join(map(str, chosen))}) | "
            f"{interval('probe', 'map')} | {interval('probe', 'f1_macro')} | {interval('probe', 'accuracy')} |",
            f"| recipe - probe, paired | {paired('map')} | {paired('f1_macro')} | {paired('accuracy')} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--mosaics", type=int, default=400, help="training mosaics per split")
    parser.add_argument("--no-record", action="store_true", help="print the table, do not append it to RESULTS.md")
    args = parser.parse_args()
    prepare_cpu_process()
    with tempfile.TemporaryDirectory(prefix="multi-label-") as scratch:
        body = table(measure(args, Path(scratch)))
    print(body)
    if not args.no_record:
        record(f"### Multi-label food mosaics, {args.splits} resampled splits, {args.mosaics} training mosaics", body)


if __name__ == "__main__":
    main()
