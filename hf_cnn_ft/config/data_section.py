"""The recipe's data section: where the labelled and unlabeled images come from and how they are split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hf_cnn_ft.config.choices import CROSS_SPLIT_DUPLICATES


@dataclass
class DataArguments:
    """Where the images come from and how they are split."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id, a folder of images in class sub-folders, a CSV/JSONL file of "
            "(image path, label) rows, or a folder written by `Dataset.save_to_disk`."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub dataset branch, tag or commit."})
    image_column: str | None = field(
        default=None, metadata={"help": "Column holding the images or image paths (found automatically if unset)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Column holding the class labels (found automatically if unset)."}
    )
    multi_label: bool | None = field(
        default=None,
        metadata={
            "help": "Several labels per image (a photo with a cat and a dog): sigmoid outputs, one decision threshold "
            "per label fitted on the validation split. null: inferred, true when the label column holds lists "
            "(JSON lines, a Hub sequence of ClassLabel) or data.label_separator is set."
        },
    )
    label_separator: str | None = field(
        default=None,
        metadata={"help": "Splits a CSV's label cell into several labels (e.g. ';' for 'cat;dog'): multi-label."},
    )
    slice_column: str | None = field(
        default=None,
        metadata={"help": "A metadata column (site, camera, batch...): the report gives accuracy and F1 per value."},
    )
    train_split: str = field(default="train", metadata={"help": "Name of the training split."})
    validation_split: str | None = field(
        default=None,
        metadata={"help": "Name of an existing validation split; unset looks for validation/valid/val/dev."},
    )
    test_split: str | None = field(
        default=None, metadata={"help": "Name of an existing test split; unset looks for a split named test."}
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the training images held out for validation when no split exists."}
    )
    test_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Share of the training images held out for the final test when no test split exists. "
            "0 means no test split: the final evaluation then runs on the validation split."
        },
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the stratified split, independent of training."})
    resplit: bool = field(
        default=False,
        metadata={
            "help": "Pool the dataset's own splits and draw train/validation/test again, stratified, with "
            "split_seed and the same sizes: a recipe measured over several split seeds (benchmarks/accuracy.py "
            "--splits) is not a property of one test split."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training split (debugging)."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the validation and test splits (debugging)."}
    )
    decode_cache: bool = field(
        default=True,
        metadata={
            "help": "Decode and resize every image once, into an Arrow cache, instead of every epoch "
            "(evaluation pixels are unchanged; training crops come from the resized copy)."
        },
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Decode every image once before training and skip (and report) the unreadable ones."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training images as a stream, decoded as they go by, with flat memory (an unreadable image"
            " is skipped when reached); a Hub id or a folder of Parquet/.tar shards is opened as one. Needs max_steps."
        },
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "Images a stream holds to shuffle."})
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes for the passes over every image before training (readable check, duplicate hashes, "
            "decode-once cache); null: one per core, up to 8, for splits of 2,000 images or more."
        },
    )
    read_test_split: bool = field(
        default=True,
        metadata={
            "help": "false: the test split is set aside unread (not decoded, hashed nor evaluated) and the run is "
            "judged on validation, as `hf-cnn-ft tune` judges its trials."
        },
    )
    folds: int | None = field(
        default=None,
        metadata={
            "help": "Cross-validation: pool the training and validation images, cut them into this many stratified "
            "folds (with split_seed) and validate on fold `fold`, training on the others; the test split stays "
            "apart. `hf-cnn-ft tune` scores its trials this way when the validation split is small."
        },
    )
    fold: int = field(default=0, metadata={"help": "The validation fold of data.folds (0 to folds - 1)."})
    unlabeled: str | None = field(
        default=None,
        metadata={
            "help": "Images without labels (a folder, a CSV/JSONL of paths, a Hub dataset or a saved dataset; any "
            "labels in it are ignored) that the run learns from too (signal.unlabeled_method). Copies of validation "
            "or test images are removed from it, loudly."
        },
    )
    labels_per_class: int | None = field(
        default=None,
        metadata={
            "help": "Keep this many labelled training images per class and move the rest, labels dropped, into the "
            "unlabeled pool: the semi-supervised benchmark protocol (what a few labels and many images would give)."
        },
    )
    max_unlabeled_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many unlabeled images (drawn with split_seed)."}
    )
    cross_split_duplicates: Literal[CROSS_SPLIT_DUPLICATES] = field(
        default="remove",
        metadata={
            "help": "Validation/test images byte-identical to an image of an earlier split (train, then validation) "
            "are always reported; remove takes them out of the evaluated split, keep leaves them (optimistic figures)."
        },
    )
