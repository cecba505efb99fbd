"""Exports measured on finished runs: for each format and precision, the file size, single-image latency
(p50 / p95) and throughput at batch 8 on one thread, and test accuracy (and a class's F1) beside PyTorch
float32 eager on the same test images, each image seen once, without test-time flips.

    hf-cnn-ft train recipes/food-efficientnet-lite0.yaml --output_dir outputs/bench-exports/food
    hf-cnn-ft train recipes/elpv-defects-mobilenetv2.yaml --output_dir outputs/bench-exports/elpv
    python benchmarks/exports.py outputs/bench-exports/food outputs/bench-exports/elpv --class defective
    .venv-litert/bin/python benchmarks/exports.py outputs/bench-exports/food ... --formats litert

Each run is exported (with int8) into RUN/bench-FORMAT, replacing an earlier benchmark export.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, record  # benchmarks/ is on the path as a script
from sklearn.metrics import f1_score

from hf_cnn_ft.data.dataset import split_labels
from hf_cnn_ft.data.inputs import pixel_batches
from hf_cnn_ft.data.transforms import eval_transform
from hf_cnn_ft.evaluation.evaluate import labelled_split
from hf_cnn_ft.share.exports.exporting import LogitsOnly, export_model
from hf_cnn_ft.share.exports.registry import export_format
from hf_cnn_ft.share.run_dir import data_arguments_for, load_run
from hf_cnn_ft.training.machine import prepare_cpu_process


def test_pixels(run: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The run's test split as model inputs, its labels as the model's class indices, and the class names."""
    model, data_config = load_run(run)
    _, dataset, _, labels = labelled_split(model, data_arguments_for(run, None), "test")
    assert len(labels) == len(split_labels(dataset))
    batches = pixel_batches(dataset, eval_transform(data_config), batch_size=32)
    pixels = np.concatenate([batch.float().contiguous().numpy() for batch in batches])
    return pixels, labels, [model.config.id2label[i] for i in range(model.config.num_labels)]


def timings(run_batch, pixels: np.ndarray, repeats: int) -> dict[str, float]:
    """p50 / p95 ms of one image at a time, and images per second in batches of 8."""
    single = pixels[:1]
    for _ in range(5):
        run_batch(single)
    seconds = []
    for i in range(repeats):
        start = time.perf_counter()
        run_batch(pixels[i % len(pixels) : i % len(pixels) + 1])
        seconds.append(time.perf_counter() - start)
    batch = pixels[:8]
    run_batch(batch)
    start, images = time.perf_counter(), 0
    while time.perf_counter() - start < 3.0:
        run_batch(batch)
        images += len(batch)
    return {
        "p50": 1000 * float(np.percentile(seconds, 50)),
        "p95": 1000 * float(np.percentile(seconds, 95)),
        "throughput": images / (time.perf_counter() - start),
    }


def quality(logits: np.ndarray, labels: np.ndarray, class_index: int | None) -> dict[str, float]:
    predicted = logits.argmax(-1)
    figures = {"accuracy": float((predicted == labels).mean())}
    if class_index is not None:
        figures["class_f1"] = float(f1_score(labels == class_index, predicted == class_index))
    return figures


def size_of(folder: Path, stem: str) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.rsplit(".", 1)[0] == stem) / 1e6


def pytorch_row(run: Path, pixels: np.ndarray, labels: np.ndarray, class_index: int | None, repeats: int) -> dict:
    model, _ = load_run(run)
    module = LogitsOnly(model).eval()

    def run_batch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).numpy()

    torch.set_num_threads(2)
    logits = np.concatenate([run_batch(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    torch.set_num_threads(1)
    measured = timings(run_batch, pixels, repeats)
    torch.set_num_threads(2)
    size = sum(p.stat().st_size for p in run.glob("*.safetensors")) / 1e6
    return {
        "model": "PyTorch eager",
        "precision": "float32",
        "size": size,
        **measured,
        **quality(logits, labels, class_index),
    }


def format_rows(
    run: Path, name: str, pixels: np.ndarray, labels: np.ndarray, class_index: int | None, repeats: int, qat: int
) -> list[dict]:
    export = export_format(name)
    result = export_model(run, run / f"bench-{name}", name, "int8", qat_epochs=qat)
    rows = []
    int8 = f"int8, {qat} QAT epoch{'s' if qat > 1 else ''}" if qat else "int8"
    for precision, path in (("float32", result.model_path), (int8, result.quantized_path)):
        logits = export.load(path, None)(pixels)
        measured = timings(export.load(path, 1), pixels, repeats)
        size = size_of(result.directory, path.name.rsplit(".", 1)[0])
        row = {"model": name, "precision": precision, "size": size, **measured}
        rows.append(row | quality(logits, labels, class_index))
    return rows


def table(rows: list[dict], reference: dict, class_name: str | None) -> str:
    head = "| model | precision | size | latency p50 / p95, 1 image | batch 8 | test accuracy |"
    head += f" {class_name} F1 |" if class_name else ""
    lines = [head, "|---" * (7 if class_name else 6) + "|"]
    for row in rows:
        speed = reference["p50"] / row["p50"]
        accuracy = f"{row['accuracy']:.4f} ({100 * (row['accuracy'] - reference['accuracy']):+.1f})"
        cells = [
            row["model"],
            row["precision"],
            f"{row['size']:.1f} MB",
            f"{row['p50']:.1f} / {row['p95']:.1f} ms ({speed:.1f}x)",
            f"{row['throughput']:.0f} img/s",
            accuracy,
        ]
        if class_name:
            cells.append(f"{row['class_f1']:.4f} ({100 * (row['class_f1'] - reference['class_f1']):+.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--formats", default="onnx,openvino,executorch")
    parser.add_argument("--class", dest="class_name", help="also this class's F1 where a run has it (defective)")
    parser.add_argument("--repeats", type=int, default=100, help="single-image timings per model")
    parser.add_argument("--qat-epochs", dest="qat_epochs", type=int, default=0, help="export --qat_epochs")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    prepare_cpu_process()
    sections = []
    for run in args.runs:
        pixels, labels, names = test_pixels(run)
        class_index = names.index(args.class_name) if args.class_name in names else None
        class_name = args.class_name if class_index is not None else None
        reference = pytorch_row(run, pixels, labels, class_index, args.repeats)
        rows = [reference]
        for name in args.formats.split(","):
            rows += format_rows(run, name.strip(), pixels, labels, class_index, args.repeats, args.qat_epochs)
        text = table(rows, reference, class_name)
        print(f"\n{run} ({len(labels)} test images)\n{text}")
        sections.append(f"`{run.name}` ({len(labels)} test images):\n\n{text}")
    if not args.no_record:
        note = "latency and batch-8 throughput on one thread; (x): speed-up over PyTorch eager float32; (+/-): points"
        record("### Exports: size, speed and test accuracy per format", "\n\n".join(sections), f"{machine()}; {note}")


if __name__ == "__main__":
    main()
