"""How long the command line takes to answer when it has nothing to compute: `--help`, a bad setting, a
wrong path, and the Hub failures (a rejected token, an unreachable Hub with and without a cached model).

Each command runs as a fresh process (`python -m hf_cnn_ft ...`), as a user types it; the figure is
the median wall time of `--repeats` runs. The Hub cases use the loopback Hub of the test suite
(tests/hub_server.py) with a tiny model trained and pushed first. Appends the table to
benchmarks/RESULTS.md.

    python benchmarks/cli_latency.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
sys.path.insert(0, str(ROOT / "tests"))


def run(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hf_cnn_ft", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    error = next((line for line in result.stderr.splitlines() if line.startswith("hf-cnn-ft: error:")), "")
    return seconds, result.returncode, error


def closed_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def hub_cases(scratch: Path, env: dict[str, str]) -> list[tuple[str, list[str], dict[str, str]]]:
    """Trains and pushes a tiny model to a loopback Hub, caches it, and returns the Hub failure cases."""
    from hub_server import HubServer

    from hf_cnn_ft.extras.synthetic import make_shapes_folder

    hub = HubServer().start()
    token = hub.state.add_user("bench")
    online = {**env, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1"}
    shapes = make_shapes_folder(scratch / "shapes", per_class=20, size=32)
    settings = ["--model", "test_resnet", "--pretrained", "false", "--image_size", "32", "--num_train_epochs", "1"]
    train = ["train", *settings, "--dataset", str(shapes), "--output_dir", str(scratch / "run")]
    subprocess.run([sys.executable, "-m", "hf_cnn_ft", *train, "--repo_id", "bench/tiny"], env=online, check=True)
    image = str(next(shapes.rglob("*.png")))
    subprocess.run([sys.executable, "-m", "hf_cnn_ft", "predict", "bench/tiny", image], env=online, check=True)
    down = {**online, "HF_ENDPOINT": closed_endpoint()}
    return [
        ("predict by repo id, invalid HF_TOKEN", ["predict", "bench/tiny", image], {**online, "HF_TOKEN": "hf_bad"}),
        ("predict by repo id, Hub down, model cached", ["predict", "bench/tiny", image], down),
        ("predict by repo id, Hub down, not cached", ["predict", "bench/other", image], down),
        ("predict microsoft/resnet-50, huggingface.co, no network", ["predict", "microsoft/resnet-50", image], env),
        ("train --repo_id with a read-only token", [*train, "--repo_id", "bench/x"],
         {**online, "HF_TOKEN": hub.state.add_user("reader", role="read")}),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-results", action="store_true", help="print the table only")
    options = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cli_latency_"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(scratch / "hf_home")}
    env.pop("HF_TOKEN", None)
    data = str(scratch / "shapes")
    cases = [
        ("hf-cnn-ft --help", ["--help"], env),
        ("hf-cnn-ft train --help", ["train", "--help"], env),
        ("train --learning_rate -1", ["train", "--dataset", data, "--learning_rate", "-1"], env),
        ("train --hflip 2", ["train", "--dataset", data, "--hflip", "2"], env),
        ("train --dataset MISSING", ["train", "--dataset", str(scratch / "missing")], env),
        ("evaluate MISSING_RUN", ["evaluate", str(scratch / "no-run")], env),
        *hub_cases(scratch, env),
    ]
    rows = []
    for name, args, case_env in cases:
        runs = [run(args, case_env) for _ in range(options.repeats)]
        seconds = statistics.median(r[0] for r in runs)
        _, code, error = runs[-1]
        rows.append(f"| {name} | {seconds:.2f} s | {code} | {error.removeprefix('hf-cnn-ft: error: ')[:90]} |")
        print(rows[-1], flush=True)
    table = "\n".join(["| command | median wall time | exit | first words of the error |", "|---|---|---|---|", *rows])
    if options.no_results:
        return
    with RESULTS.open("a") as handle:
        handle.write(
            f"\n## Command-line latency ({date.today()})\n\n`python benchmarks/cli_latency.py --repeats "
            f"{options.repeats}` on {platform.machine()}, {os.cpu_count()} CPU cores, Python "
            f"{platform.python_version()}; each a fresh process, median of {options.repeats}:\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
