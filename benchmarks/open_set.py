"""The "none of these" answer on real photos (issue 34): a food model trained on four of the six food groups,
asked about the other two and about Fashion-MNIST product photos.

For each of `--splits` resampled stratified splits of the four known groups: the shipped food recipe
(`recipes/food-efficientnet-lite0.yaml`) trains with its "unknown" threshold fitted on its validation split
(`report.rejection_rate` 0.05), then `evaluate --unknown` measures, against its test split, each score's AUROC and,
at its own threshold, the false-acceptance rate (unknown images answered with a class) and the share of known
test photos answered unknown. Goal: AUROC at least 0.85. Appends the table to benchmarks/RESULTS.md.

    hf-cnn-ft data food && hf-cnn-ft data fashion-mnist && hf-cnn-ft import-weights --known efficientnet_lite0
    python benchmarks/open_set.py --splits 5
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from common import record  # benchmarks/ is on the path as a script
from datasets import load_from_disk

from hf_cnn_ft.config.recipe import load_recipe
from hf_cnn_ft.evaluation.evaluate import evaluate_model
from hf_cnn_ft.evaluation.intervals import mean_interval
from hf_cnn_ft.share.run_dir import data_arguments_for
from hf_cnn_ft.training.machine import prepare_cpu_process
from hf_cnn_ft.training.train import train

RECIPE = Path("recipes/food-efficientnet-lite0.yaml")
HELD_OUT = ("fish_seafood", "spices_nuts")  # the two groups the model never sees


def food_folders(food: Path, root: Path) -> tuple[Path, Path]:
    """The known groups as one image folder per class (train, validation and test pooled: the runs resample),
    and every photo of the held-out groups in one folder."""
    known, unknown = root / "known", root / "unknown-food"
    for split in food.iterdir():
        if not split.is_dir():
            continue
        for group in split.iterdir():
            target = unknown if group.name in HELD_OUT else known / group.name
            target.mkdir(parents=True, exist_ok=True)
            for photo in group.iterdir():
                shutil.copyfile(photo, target / f"{split.name}-{photo.name}")
    return known, unknown


def fashion_photos(saved: Path, root: Path, count: int) -> Path:
    """`count` Fashion-MNIST test images, evenly over its classes, as PNG files."""
    folder = root / "unknown-fashion"
    folder.mkdir(parents=True)
    test = load_from_disk(str(saved))["test"]
    label = next(name for name, feature in test.features.items() if hasattr(feature, "names"))
    image = next(name for name in test.column_names if name != label)
    picked = test.shuffle(seed=0).select(range(count))
    for index, row in enumerate(picked):
        row[image].convert("RGB").save(folder / f"fashion-{index:04d}-{row[label]}.png")
    return folder


def measure(args: argparse.Namespace, root: Path, unknowns: dict[str, Path]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {name: [] for name in unknowns}
    for split in range(args.splits):
        out = root / f"run-{split}"
        values = {"dataset": str(args.known), "resplit": True, "split_seed": split, "output_dir": str(out)}
        train(load_recipe(RECIPE, values={**values, "disable_tqdm": True, "report_at_end": False}))
        for name, folder in unknowns.items():
            report = evaluate_model(out, data_arguments_for(out, None), "test", unknown=[folder])
            found[name].append({**report["unknown"], "accuracy": report["accuracy"]})
            print(split, name, {k: report["unknown"][k] for k in ("auroc", "false_acceptance_rate")}, flush=True)
    return found


def interval(values: list[float]) -> str:
    """Over the splits, one value each."""
    return str(mean_interval(values, list(range(len(values)))))


def table(found: dict[str, list[dict]]) -> str:
    rows = [
        "| images of other classes | images | AUROC, score used | AUROC msp | AUROC energy | score used | "
        "false acceptance at the threshold | known test photos answered unknown | test accuracy (4 groups) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in found.items():
        used = sorted({run["score"] for run in runs})
        rows.append(
            f"| {name} | {runs[0]['unknown_images']} | {interval([r['auroc_of_score'] for r in runs])} | "
            f"{interval([r['auroc']['msp'] for r in runs])} | {interval([r['auroc']['energy'] for r in runs])} | "
            f"{', '.join(used)} | {interval([r['false_acceptance_rate'] for r in runs])} | "
            f"{interval([r['known_rejected'] for r in runs])} | {interval([r['accuracy'] for r in runs])} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--food", type=Path, default=Path("data/food"))
    parser.add_argument("--fashion", type=Path, default=Path("data/fashion-mnist"))
    parser.add_argument("--fashion-images", dest="fashion_images", type=int, default=300)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    prepare_cpu_process()
    root = Path(tempfile.mkdtemp(prefix="open-set-"))
    args.known, unknown_food = food_folders(args.food, root)
    unknowns = {f"food: {', '.join(HELD_OUT)}": unknown_food, "Fashion-MNIST": fashion_photos(args.fashion, root, 300)}
    text = table(measure(args, root, unknowns))
    print("\n" + text)
    if not args.no_record:
        record(
            f'### "None of these": food model on four groups, {args.splits} resampled splits, recipe '
            f"{RECIPE.name}, report.rejection_rate 0.05",
            text + "\n\nmean ± std over the splits [95% interval]",
        )


if __name__ == "__main__":
    main()
