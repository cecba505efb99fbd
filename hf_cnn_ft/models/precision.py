"""The precision a backbone runs fastest in on this machine: float32, or bfloat16 / float16 autocast.

Lower precision is not faster everywhere: on CPUs with AVX-512 bfloat16, ResNet-50 trains about twice as fast
in bfloat16 while EfficientNet-Lite0 trains slower (its depthwise convolutions have no fast bfloat16 kernels).
So `training.precision: auto` is settled per run by a short timed probe of each precision the device runs
natively (a few steps of a copy of the model on the device it trains on, on random images of the run's size),
and the result is cached per backbone, input size, kind of step, batch and device: the next run of the same
shape pays nothing. On a GPU the probe steps at the run's own batch (small batches there time kernel launches,
not arithmetic); on a CPU a few images show the same ratios at a fraction of the cost. Weights stay
float32 in every case (autocast computes in the low precision, the optimizer updates float32 weights), so the
saved model is the same kind of file whatever was chosen.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Images per probed step on a CPU: a training step's cost is per batch (BatchNorm, the optimizer), a forward
# pass's per image. A GPU steps at the run's batch (at most GPU_PROBE_BATCH).
PROBE_BATCH = {"train": 8, "forward": 4}
GPU_PROBE_BATCH = 128
# A precision's first steps are slow (kernels chosen, memory first touched), float32's for longer: 2.2, 0.8, 0.6,
# then 0.5 s for MobileNetV2 at 16 images, against 0.55 then 0.48 s in bfloat16. Each precision warms until one
# step is within SETTLED of the one before (at most MAX_WARMUP_STEPS); a fixed single warm-up step had timed
# float32 mid-warm-up and made bfloat16 look 1.2-1.3x faster than float32 where the two run level.
MAX_WARMUP_STEPS, TIMED_STEPS, SETTLED = 6, 2, 0.95
# A lower precision is chosen only when clearly faster: a few probed steps cannot tell 5% apart, and float32 is
# the safer numerics (MobileNetV2 measured 0.93-1.07x in bfloat16 from one probe to the next).
REQUIRED_SPEEDUP = 1.10
CACHE_FILE = "precision.json"


def flush_denormals_on_cpu() -> None:
    """Denormal floats cost 20-30x on some CPUs; training never needs them."""
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def probe_batch(kind: str, run_batch: int, device: str) -> int:
    """Images per probed step: the run's own batch on a GPU, a few on a CPU."""
    return min(run_batch, GPU_PROBE_BATCH) if device == "cuda" else PROBE_BATCH[kind]


def native_precisions(device: str | None = None) -> list[str]:
    """The precisions the device computes in natively: bfloat16 on CPUs with AVX-512 BF16 or AMX, bfloat16 (where
    supported) and float16 on CUDA GPUs; float32 everywhere."""
    device = device or device_type()
    if device == "cuda":
        return ["fp32", *(["bf16"] if torch.cuda.is_bf16_supported() else []), "fp16"]
    fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return ["fp32", "bf16"] if fast else ["fp32"]


def auto_candidates(device: str | None = None) -> list[str]:
    """The precisions `auto` times: float32 and one lower precision. On a GPU that runs bfloat16, float16 is left
    out: its loss scaler checks every step's gradients for overflow, and whole training steps measured slower
    than in bfloat16 on an H200 for all four benchmark backbones (benchmarks/RESULTS.md), although forward and
    backward alone were faster; so it is auto's choice only on GPUs without bfloat16."""
    native = native_precisions(device)
    return [p for p in native if not (p == "fp16" and "bf16" in native)]


_RUN_PRECISION = "_hf_cnn_ft_precision"  # set on a loaded model: the precision its run settled (not saved)


def set_run_precision(model: nn.Module, precision: str) -> nn.Module:
    """Records on a loaded model the precision its run chose, for every forward-only path to run in."""
    setattr(model, _RUN_PRECISION, precision)
    return model


def run_precision(model: nn.Module) -> str:
    """The precision a model's forward passes run in: its run's, or float32 for a model from elsewhere."""
    return getattr(model, _RUN_PRECISION, "fp32")


def autocast(precision: str, device: str | None = None) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in for `precision` (nothing for float32)."""
    if precision not in DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device or device_type(), dtype=DTYPES[precision])


@dataclass
class PrecisionChoice:
    precision: str
    reason: str
    seconds_per_step: dict[str, float]  # what the probe measured (empty when there was one candidate)
    cached: bool = False
    probe_seconds: float = 0.0  # what the probe cost this run (0 from the cache)


def _cache_path() -> Path:
    root = os.environ.get("HF_CNN_FT_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
    return Path(root) / "hf-cnn-ft" / CACHE_FILE


def _signature(model: nn.Module) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    architecture = getattr(model.config, "architecture", None) or model.config.model_type
    return f"{type(model).__name__}-{architecture}-{parameters}"


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu-{torch.backends.cpu.get_cpu_capability()}-{torch.get_num_threads()}threads"


def _seconds_per_step(
    model: nn.Module, precision: str, size: int, batch: int, train: bool, channels_last: bool
) -> float:
    """The fastest of TIMED_STEPS steps in `precision`, once its warm-up has settled."""
    device = next(model.parameters()).device
    pixels = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    model.train(train)

    def timed_step() -> float:
        started = time.perf_counter()
        with torch.set_grad_enabled(train), autocast(precision, device.type):
            logits = model(pixel_values=pixels).logits
        if train:
            logits.float().sum().backward()
            model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    previous = timed_step()
    for _ in range(MAX_WARMUP_STEPS - 1):
        seconds = timed_step()
        if seconds >= SETTLED * previous:
            break
        previous = seconds
    return min(timed_step() for _ in range(TIMED_STEPS))


def choose_precision(
    model: nn.Module, size: int, train: bool, channels_last: bool, run_batch: int = PROBE_BATCH["train"]
) -> PrecisionChoice:
    """The fastest native precision for `model` at `size` px (a training step, or a forward pass), from the cache
    or a timed probe on a copy of the model on the device the run computes on."""
    device = device_type()
    candidates = auto_candidates(device)
    if len(candidates) == 1:
        return PrecisionChoice("fp32", f"{_device_name(device)} computes natively in float32 only", {})
    kind = "train" if train else "forward"
    batch = probe_batch(kind, run_batch, device)
    key = f"{_signature(model)}|{size}px|{kind}|{batch}|{_device_name(device)}|torch-{torch.__version__}"
    cache = _read_cache()
    if key in cache:
        return PrecisionChoice(**{**cache[key], "cached": True, "probe_seconds": 0.0})
    started = time.perf_counter()
    timings = _probe_timings(model, candidates, size, batch, train, channels_last, device)
    fastest = _preferred(timings)
    ratio = timings["fp32"] / timings[fastest]
    measured = ", ".join(f"{p} {1000 * s:.0f} ms" for p, s in timings.items())
    reason = (
        f"fastest of a timed {kind} step on {batch} images at {size} px on {_device_name(device)} ({measured}; "
        f"{ratio:.2f}x float32; a lower precision needs {REQUIRED_SPEEDUP:.2f}x)"
    )
    choice = PrecisionChoice(fastest, reason, {p: round(s, 5) for p, s in timings.items()})
    _write_cache({**cache, key: {k: v for k, v in asdict(choice).items() if k != "cached"}})
    choice.probe_seconds = round(time.perf_counter() - started, 3)
    return choice


def _probe_timings(
    model: nn.Module, candidates: list[str], size: int, batch: int, train: bool, channels_last: bool, device: str
) -> dict[str, float]:
    """Seconds per step in each candidate precision, on `device` (the model itself is left where it is)."""
    here = next(model.parameters()).device
    # A training step changes the weights (and a move to the GPU moves them): those steps run on a copy.
    copied = train or here.type != device
    probe = copy.deepcopy(model).to(device) if copied else model
    if channels_last:
        probe.to(memory_format=torch.channels_last)
    was_training = model.training
    try:
        return {p: _seconds_per_step(probe, p, size, batch, train, channels_last) for p in candidates}
    finally:
        model.train(was_training)
        del probe
        if device == "cuda":
            torch.cuda.empty_cache()


def _preferred(timings: dict[str, float]) -> str:
    """float32, unless the lower precision timed is REQUIRED_SPEEDUP x faster."""
    lower = next((p for p in timings if p != "fp32"), "fp32")
    return lower if timings["fp32"] >= REQUIRED_SPEEDUP * timings[lower] else "fp32"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cache, indent=1))
        os.replace(temporary, path)
    except OSError as exc:  # a cache that cannot be written costs the next run a probe, nothing more
        logger.info("the precision probe's result was not cached (%s)", exc)
