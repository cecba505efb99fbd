"""What a multi-label recipe (data.multi_label, data.label_separator) may combine with.

Checked when the recipe loads where the recipe says multi-label, and again once the data is loaded where the
label column says it (`multi_label_conflict`)."""

from __future__ import annotations

from hf_cnn_ft.config.data_section import DataArguments
from hf_cnn_ft.config.signal import SignalArguments
from hf_cnn_ft.errors import UserError


def multi_label_conflict(data: DataArguments, signal: SignalArguments, metric: str | None) -> str | None:
    """The first setting that a multi-label run cannot use, as one line; None when there is none."""
    conflicts = (
        (
            data.unlabeled or data.labels_per_class,
            "data.unlabeled / data.labels_per_class: learning from unlabeled images pseudo-labels one class per "
            "image; remove them for a multi-label run",
        ),
        (data.streaming, "data.streaming: a multi-label stream is not supported; remove data.streaming"),
        (
            signal.teachers,
            "signal.teachers: distillation matches one softmax over the classes; remove it for a multi-label run",
        ),
        (
            signal.co_tuning_weight,
            "signal.co_tuning_weight: Co-Tuning relates one class per image to the pretrained classes; set it to 0 "
            "for a multi-label run",
        ),
        (
            metric == "top5_accuracy",
            "training.metric_for_best_model: top5_accuracy ranks one class per image; use f1_macro, f1_weighted, "
            "accuracy (every label right) or loss for a multi-label run",
        ),
    )
    return next((message for found, message in conflicts if found), None)


def check_multi_label(data: DataArguments, signal: SignalArguments, metric: str | None) -> None:
    """At load: the separator's own constraints, and conflicts where the recipe says multi-label."""
    if data.label_separator is not None:
        if not data.label_separator:
            raise UserError("data.label_separator: '' cuts nothing: give the character between labels, e.g. ';'")
        if data.multi_label is False:
            raise UserError(
                "data.label_separator cuts a label cell into several labels, but data.multi_label is false: set it "
                "to true (or remove it), or remove data.label_separator"
            )
    if data.multi_label or data.label_separator:
        conflict = multi_label_conflict(data, signal, metric)
        if conflict:
            raise UserError(conflict)
