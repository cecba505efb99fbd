"""What a finished run records: one typed summary, its `metrics.json`.

Training writes it once; the card, the app, push, merge, tune and the report read it back through
`read_summary`. The JSON keeps its long-standing shape (the final report under the evaluated split's
name), so scripts that read metrics.json by hand keep working; a key this version does not know is an
error rather than something silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_cnn_ft.errors import UserError
from hf_cnn_ft.share.atomic import write_json

COMPLETION_MARKER = "metrics.json"  # written last: its presence marks a finished run
# Added to a finished run later, by `hf-cnn-ft report` and by `tune` for the run it trained.
FINDINGS = ("report", "search")


@dataclass(frozen=True)
class RunSummary:
    evaluated_on: str  # the split of the one final evaluation: test, or validation when there is none
    evaluation: dict[str, Any]  # that evaluation's report; stored in metrics.json under the split's name
    label_names: list[str]
    preprocessing: dict[str, Any]  # the DataConfig the model was trained and evaluated with
    split_sizes: dict[str, int | None]  # None for a streamed split
    class_counts: dict[str, dict[str, int]]
    train_seconds: float
    hardware: str
    processes: int = 1
    library: str = "transformers"  # or "timm": the layout of the saved weights
    base_model: str | None = None
    best_validation: dict[str, float] = field(default_factory=dict)
    epochs_trained: float = 0.0
    best_checkpoint: str | None = None
    skipped_images: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: dict[str, Any] | None = None
    peft: dict[str, Any] | None = None
    linear_probe: dict[str, float] | None = None
    linear_probe_history: list[dict[str, float]] = field(default_factory=list)
    precision: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    unknown_rejection: dict[str, Any] | None = None  # the "none of these" threshold, or why none was fitted
    label_thresholds: dict[str, Any] | None = None  # a multi-label run's threshold per label, fitted on validation
    unfreeze_history: list[dict[str, Any]] | None = None
    rank_weight_fingerprints: list[float] | None = None
    weight_interpolation: dict[str, Any] | None = None
    probe_candidate: dict[str, Any] | None = None
    signal: dict[str, Any] | None = None
    test_time_flips: str = "none"
    without_test_time_augmentation: dict[str, Any] | None = None
    report: dict[str, Any] | None = None  # `hf-cnn-ft report`'s findings
    search: dict[str, Any] | None = None  # the `tune` search that found this run's recipe

    @property
    def is_adapter(self) -> bool:
        """The run saved a peft adapter (not merged into full weights)."""
        return bool(self.peft) and not self.peft.get("merged")

    def with_finding(self, key: str, finding: dict[str, Any]) -> RunSummary:
        if key not in FINDINGS:
            raise ValueError(f"a finished run records findings {FINDINGS}, not {key!r}")
        return dataclasses.replace(self, **{key: finding})

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for key in FINDINGS:  # added when found: absent until then
            if values[key] is None:
                del values[key]
        evaluation = values.pop("evaluation")
        return {"evaluated_on": values.pop("evaluated_on"), self.evaluated_on: evaluation, **values}

    @classmethod
    def from_json(cls, values: dict[str, Any], source: str = "metrics.json") -> RunSummary:
        values = dict(values)
        split = values.get("evaluated_on")
        if not isinstance(split, str) or split not in values:
            raise UserError(f"{source} names no evaluated split with its report: not a run summary of hf-cnn-ft")
        values["evaluation"] = values.pop(split)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"{source} has key(s) {', '.join(map(repr, unknown))} this version does not know: it was written "
                "by another version of hf-cnn-ft; install that version, or train the run again"
            )
        missing = sorted(f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in values)
        if missing:
            raise UserError(f"{source} lacks {', '.join(missing)}: the run did not finish writing it; train it again")
        return cls(**values)


def _required(item: dataclasses.Field) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def read_summary(directory: str | Path) -> RunSummary:
    path = Path(directory) / COMPLETION_MARKER
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{directory} is not a finished run (no {COMPLETION_MARKER})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is damaged ({exc}); train the run again") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} is not a run summary (a JSON object); train the run again")
    return RunSummary.from_json(values, str(path))


def write_summary(directory: Path, summary: RunSummary) -> None:
    """Writes metrics.json atomically: its presence marks the folder a finished run."""
    write_json(directory / COMPLETION_MARKER, summary.to_json())
