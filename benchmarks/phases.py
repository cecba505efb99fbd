"""Where a demo-size run's wall time goes: start-up, data, model, the probe, the Trainer, evaluation, the
report, the artefacts, each timed in a fresh `hf-cnn-ft train` process.

The phases are the named steps of training/train.py (and what they call), timed by wrapping them in the
child process; "start-up" is the process's wall time before the first of them (interpreter and imports),
measured from the parent. "Training" is the probe's fitting and the Trainer's loop; everything else is
time outside training. Appends the table to benchmarks/RESULTS.md.

    python benchmarks/phases.py recipes/food-efficientnet-lite0.yaml --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, record

# The child: wraps each phase, runs the command line's train, prints the timings as one JSON line.
CHILD = r"""
import json, sys, time
started = time.perf_counter()
import hf_cnn_ft.training.train as train_module
import hf_cnn_ft.cli.main
from transformers import Trainer

seconds = {}

def timed(owner, name, phase):
    inner = getattr(owner, name)
    def wrapper(*args, **kwargs):
        begun = time.perf_counter()
        try:
            result = inner(*args, **kwargs)
        finally:
            seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - begun
        if hasattr(result, "probe_seconds"):  # prepare_model's result: the probe's own share of it
            seconds["probe (features and head)"] = result.probe_seconds
        return result
    setattr(owner, name, wrapper)

for name, phase in [
    ("claim_output_dir", "claim the folder"), ("start_run", "load and check the data"),
    ("prepare_model", "model, decode cache, precision, probe"), ("build_trainer", "build the Trainer"),
    ("final_evaluation", "final evaluation"), ("calibrate", "temperature"), ("write_artefacts", "artefacts and card"),
    ("report_finished_run", "report (top losses, Grad-CAM)"),
]:
    timed(train_module, name, phase)
timed(Trainer, "train", "Trainer loop")
imported = time.perf_counter() - started
from hf_cnn_ft.cli.main import exit_quickly, main
code = main(sys.argv[1:])
print("PHASES " + json.dumps({"code": code, "imports": imported, "seconds": seconds}))
exit_quickly(code)  # as the hf-cnn-ft command ends
"""

# As on a user's machine: Python keeps the compiled bytecode of what it imports (some sandboxes turn that off,
# which recompiles every module of the package on every start).
USER_ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
TRAINING = ("probe (features and head)", "Trainer loop")


def one_run(recipe: str, output_dir: Path) -> dict[str, float]:
    begun = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, "train", recipe, "--output_dir", str(output_dir), "--overwrite_output_dir",
         "true", "--disable_tqdm", "true"],
        capture_output=True, text=True, env=USER_ENVIRONMENT,
    )  # fmt: skip
    wall = time.perf_counter() - begun
    line = next((row for row in result.stdout.splitlines() if row.startswith("PHASES ")), None)
    if line is None or result.returncode != 0:
        raise SystemExit(f"train failed ({result.returncode}): {result.stderr[-2000:]}")
    found = json.loads(line.removeprefix("PHASES "))
    phases = dict(found["seconds"])
    inside = phases.pop("model, decode cache, precision, probe")
    probe = phases.get("probe (features and head)", 0.0)
    phases["model, decode cache, precision"] = inside - probe
    rest = wall - sum(found["seconds"].values()) + probe  # the probe is inside prepare_model's time
    phases["imports (torch, transformers, peft, timm, datasets)"] = found["imports"]
    phases["interpreter, recipe, summary, exit"] = rest - found["imports"]
    phases["wall"] = wall
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default="recipes/food-efficientnet-lite0.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(options.repeats + 1):  # the first run fills the caches (decode, precision): not counted
            phases = one_run(options.recipe, Path(scratch) / "run")
            print(f"run {repeat}: {phases['wall']:.1f} s", file=sys.stderr)
            if repeat:
                runs.append(phases)
    names = [name for name in runs[0] if name != "wall"]
    order = sorted(names, key=lambda name: -statistics.median(run[name] for run in runs))
    rows = ["| phase | median seconds | share of wall time |", "|---|---|---|"]
    wall = statistics.median(run["wall"] for run in runs)
    for name in order:
        value = statistics.median(run[name] for run in runs)
        kind = " (training)" if name in TRAINING else ""
        rows.append(f"| {name}{kind} | {value:.2f} | {100 * value / wall:.0f}% |")
    outside = statistics.median(run["wall"] - sum(run.get(name, 0.0) for name in TRAINING) for run in runs)
    rows.append(f"| **wall time** | {wall:.2f} | |")
    rows.append(f"| **outside training** | {outside:.2f} | {100 * outside / wall:.0f}% |")
    body = f"Medians of {options.repeats} warm runs, each a fresh process.\n\n" + "\n".join(rows)
    record(f"### Where a run's time goes, {Path(options.recipe).name}", body, machine())
    print("\n".join(rows))


if __name__ == "__main__":
    main()
