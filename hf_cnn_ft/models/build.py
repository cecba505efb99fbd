"""Building a pretrained CNN with a fresh head for the user's classes.

The model is always an `AutoModelForImageClassification`: a `TimmWrapperForImageClassification`
for timm architectures and timm Hub repos, the native transformers class otherwise.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    PreTrainedModel,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)

from hf_cnn_ft.config.sections import ModelArguments
from hf_cnn_ft.data.data_config import DataConfig, for_small_images
from hf_cnn_ft.errors import UserError, first_line
from hf_cnn_ft.models.anatomy import backbone_of, head_linear, is_timm_model, timm_architecture
from hf_cnn_ft.models.hub import model_source
from hf_cnn_ft.models.io import MULTI_LABEL, resolve_data_config, set_data_config
from hf_cnn_ft.models.state_dicts import load_backbone_weights

logger = logging.getLogger(__name__)


def _unknown_model_error(name: str) -> UserError:
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(
        f"unknown model '{name}': not a timm architecture, a local directory or a Hub id (owner/name){hint}"
    )


def _zero_head(model: PreTrainedModel) -> None:
    head = head_linear(backbone_of(model), model.config.num_labels)
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


def _label_maps(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


# The keys of timm's pretrained_cfg that say which pretrained weights a model has.
WEIGHT_PROVENANCE = (
    "tag",
    "hf_hub_id",
    "hf_hub_filename",
    "url",
    "file",
    "source",
    "origin_url",
    "paper_ids",
    "paper_name",
    "notes",
    "license",
    "description",
)


def _build_timm(args: ModelArguments, architecture: str, label_names: list[str]) -> PreTrainedModel:
    import timm

    base, _, _ = architecture.partition(".")
    model_args = _timm_model_args(args)
    config = TimmWrapperConfig(architecture=base, model_args=model_args or None, **_label_maps(label_names))
    model = TimmWrapperForImageClassification(config)
    if args.pretrained and args.weights is None:
        try:
            pretrained = timm.create_model(architecture, pretrained=True, num_classes=len(label_names), **model_args)
        except Exception as exc:  # the Hub client raises many types; all mean the same to the user
            raise UserError(
                f"could not fetch pretrained weights for '{architecture}' ({first_line(exc)}); offline, fetch a "
                "backbone that installs without the Hub (`hf-cnn-ft import-weights --known NAME`) and give its "
                "folder as model.model, set model.weights to a local weights file, or model.pretrained: false to "
                "train from scratch"
            ) from None
        model.timm_model = pretrained
    else:
        _timm_initialisation(model)
    pretrained_cfg = dict(model.timm_model.pretrained_cfg)
    pretrained_cfg.pop("num_classes", None)
    if not args.pretrained and args.weights is None:
        # Randomly initialised: the config keeps the preprocessing, not a claim about where weights came from.
        for key in WEIGHT_PROVENANCE:
            pretrained_cfg.pop(key, None)
    model.config.pretrained_cfg = _json_ready(pretrained_cfg)
    return model


def _timm_initialisation(model: PreTrainedModel) -> None:
    """A randomly initialised timm backbone as timm initialises it. The transformers wrapper's own init
    draws every convolution from N(0, 0.02), which leaves a deep network's features near zero (1e-6 on a
    ResNet): nothing a probe or a from-scratch baseline can learn from."""
    import timm

    config = model.config
    model.timm_model = timm.create_model(
        config.architecture, pretrained=False, num_classes=config.num_labels, **(config.model_args or {})
    )


def _timm_model_args(model_args: ModelArguments) -> dict[str, Any]:
    """The recipe's settings that timm takes at model creation (kept in config.json's model_args)."""
    settings = (
        ("drop_rate", model_args.drop_rate),
        ("drop_path_rate", model_args.drop_path_rate),
        ("global_pool", model_args.global_pool),
    )
    return {k: v for k, v in settings if v is not None}


_DROPOUT_ATTRIBUTES = ("classifier_dropout_prob", "classifier_dropout", "dropout_rate", "hidden_dropout_prob")


def _config_regularisation(args: ModelArguments, config: Any, source: str) -> dict[str, Any]:
    """Config updates that set the recipe's dropout / drop-path rates (and a timm backbone's pooling) on a loaded
    architecture."""
    if config.model_type == "timm_wrapper":
        wanted = _timm_model_args(args)
        return {"model_args": {**(config.model_args or {}), **wanted}} if wanted else {}
    if args.global_pool is not None:
        raise UserError(
            f"model '{source}' ({config.model_type}) pools as transformers built it; model.global_pool needs a "
            "timm backbone: unset it, or use the timm name of the architecture"
        )
    updates: dict[str, Any] = {}
    if args.drop_path_rate is not None:
        if not hasattr(config, "drop_path_rate"):
            raise UserError(
                f"model '{source}' ({config.model_type}) has no drop-path setting; unset model.drop_path_rate"
            )
        updates["drop_path_rate"] = args.drop_path_rate
    if args.drop_rate is not None:
        attribute = next((a for a in _DROPOUT_ATTRIBUTES if hasattr(config, a)), None)
        if attribute is None:
            raise UserError(f"model '{source}' ({config.model_type}) has no dropout setting; unset model.drop_rate")
        updates[attribute] = args.drop_rate
    return updates


def _json_ready(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _build_from_pretrained(
    model_args: ModelArguments, source: str, label_names: list[str]
) -> tuple[PreTrainedModel, bool]:
    """Loads a local directory or Hub repo; returns the model and whether its head is new."""
    common = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except Exception as exc:
        raise UserError(f"could not load model '{source}' ({first_line(exc)})") from None
    regularisation = _config_regularisation(model_args, config, source)
    if not model_args.pretrained:
        # The architecture alone, randomly initialised: the baseline that shows what pretraining buys.
        config.update({**_label_maps(label_names), **regularisation})
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=model_args.trust_remote_code)
        if config.model_type == "timm_wrapper":
            _timm_initialisation(model)
        return model, True
    common.update(regularisation)
    existing = [config.id2label.get(i) for i in range(config.num_labels)] if config.id2label else []
    same_head = existing == label_names
    try:
        # The new head's size mismatch is expected: keep transformers' report of it out of the log.
        with _quiet_transformers():
            if same_head:
                model = AutoModelForImageClassification.from_pretrained(source, **common)
            else:
                model = AutoModelForImageClassification.from_pretrained(
                    source, ignore_mismatched_sizes=True, **_label_maps(label_names), **common
                )
    except Exception as exc:
        raise UserError(f"could not load model '{source}' as an image classifier ({first_line(exc)})") from None
    return model, not same_head


def build_model(
    model_args: ModelArguments, label_names: list[str], source_side: int | None = None, multi_label: bool = False
) -> tuple[PreTrainedModel, DataConfig]:
    """The backbone that the recipe names, with a head sized to `label_names`; `source_side` (the training
    images' typical shorter edge) adapts the input of unset model.image_size / crop_pct to tiny images. A
    `multi_label` model says so in its config, so that transformers' pipeline gives it sigmoid scores."""
    source = model_args.model
    if not source:
        raise UserError("no model given: set model.model (or --model) to a timm name, Hub id or local directory")
    new_head = True
    if Path(source).expanduser().is_dir():
        model, new_head = _build_from_pretrained(model_args, str(Path(source).expanduser()), label_names)
        processor_source = str(Path(source).expanduser())
    elif (architecture := timm_architecture(source)) is not None:
        model = _build_timm(model_args, architecture, label_names)
        processor_source = None
    elif "/" in source and not source.startswith((".", "/", "~")):
        processor_source = model_source(source, model_args.model_revision)
        model, new_head = _build_from_pretrained(model_args, processor_source, label_names)
    elif "/" in source or source.startswith((".", "~")):
        raise UserError(f"model directory {source} does not exist")
    else:
        raise _unknown_model_error(source)
    model.config.problem_type = MULTI_LABEL if multi_label else None
    if model_args.weights is not None:
        load_backbone_weights(model, Path(model_args.weights).expanduser())
    if new_head and model_args.zero_init_head:
        _zero_head(model)
    data_config = resolve_data_config(model, processor_source, revision=model_args.model_revision)
    if source_side is not None and model_args.image_size is None:
        data_config = for_small_images(data_config, source_side)
    if model_args.image_size is not None:
        data_config.input_size = model_args.image_size
    if model_args.crop_pct is not None:
        data_config.crop_pct = model_args.crop_pct
    if model_args.crop_mode is not None:
        data_config.crop_mode = model_args.crop_mode
    set_data_config(model, data_config)
    return model, data_config


def base_model_id(model_args: ModelArguments, model: PreTrainedModel) -> str | None:
    """The Hub repo the pretrained weights came from, for the model card's `base_model`."""
    source = model_args.model or ""
    if not model_args.pretrained or model_args.weights is not None or Path(source).expanduser().exists():
        return None
    if is_timm_model(model) and timm_architecture(source) is not None:
        return (model.config.pretrained_cfg or {}).get("hf_hub_id") or None
    return source.removeprefix("hf-hub:") if source.count("/") == 1 else None


def pretrained_head(model_args: ModelArguments) -> tuple[nn.Linear, list[str]]:
    """The classifier the pretrained weights came with (ImageNet's, for the offline backbones) and its class
    names, for Co-Tuning; one line when the backbone has none to give."""
    source = model_args.model or ""
    no_head = UserError(
        f"signal.co_tuning_weight: '{source}' has no pretrained classifier to learn from (Co-Tuning needs the "
        "weights' own head, as the imported offline backbones have): set signal.co_tuning_weight: 0"
    )
    if not model_args.pretrained or model_args.weights is not None:
        raise no_head
    try:
        with _quiet_transformers():
            if (architecture := timm_architecture(source)) is not None and not Path(source).expanduser().is_dir():
                import timm

                classifier = timm.create_model(architecture, pretrained=True).get_classifier()
                if not isinstance(classifier, nn.Linear):
                    raise no_head
                return classifier.requires_grad_(False), [str(i) for i in range(classifier.out_features)]
            local = Path(source).expanduser()
            where = str(local) if local.is_dir() else model_source(source, model_args.model_revision)
            model = AutoModelForImageClassification.from_pretrained(where)
    except UserError:
        raise
    except Exception as exc:  # the Hub client and timm raise many types; all mean the weights cannot be read
        raise UserError(f"{no_head} ({first_line(exc)})") from None
    classes = model.config.num_labels
    try:
        head = head_linear(backbone_of(model), classes)
    except RuntimeError:
        raise no_head from None
    names = [str(model.config.id2label.get(i, i)) for i in range(classes)]
    return head.requires_grad_(False), names
