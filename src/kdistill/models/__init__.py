"""The model zoo: the CRD benchmark's CIFAR models, plus timm/torchvision adapters.

`create_model("resnet32x4")` builds a zoo model; `create_model("timm:<name>")` and
`create_model("tv:<name>")` build untrained timm / torchvision classifiers (see `adapters`).
"""

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kdistill.errors import KdistillError
from kdistill.models import resnet, resnetv2, vgg, wrn  # noqa: F401 (importing registers the zoo)
from kdistill.models._common import MODELS
from kdistill.models.adapters import TimmModel, TorchvisionModel
from kdistill.models.base import FeatureModel, Features
from kdistill.models.mobilenetv2 import MobileNetV2
from kdistill.models.shufflenetv1 import ShuffleV1
from kdistill.models.shufflenetv2 import ShuffleV2

TIMM_PREFIX = "timm:"
TV_PREFIX = "tv:"
# Students the published tables train with learning rate 0.01 instead of 0.05.
_SMALL_LR_MODELS = (MobileNetV2, ShuffleV1, ShuffleV2)
_ERROR_KEY_LIMIT = 3  # keys named per kind of mismatch in an error message


def create_model(name: str, num_classes: int = 100, in_chans: int = 3, **options) -> FeatureModel:
    """Build a model by zoo name, `timm:<name>` or `tv:<name>`.

    `options` go to `timm.create_model` / the torchvision builder (e.g. `img_size=32,
    patch_size=4` for a timm ViT); zoo models take none.
    """
    if name.startswith(TIMM_PREFIX):
        return TimmModel(name.removeprefix(TIMM_PREFIX), num_classes, in_chans, **options)
    if name.startswith(TV_PREFIX):
        return TorchvisionModel(name.removeprefix(TV_PREFIX), num_classes, in_chans, **options)
    factory = MODELS.get(name)
    if options:
        raise KdistillError(
            f"model '{name}' takes no options ({', '.join(sorted(options))}): "
            f"options apply only to timm: and tv: models"
        )
    return factory(num_classes=num_classes, in_chans=in_chans)


def list_models() -> list[str]:
    """Zoo names (with aliases); `timm:<name>` and (CNN) `tv:<name>` models work too."""
    return MODELS.names()


def is_small_lr_model(name: str) -> bool:
    return name in MODELS and MODELS.get(name) in _SMALL_LR_MODELS


def _state_dict_in(loaded: object, path: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded file: under 'model' (the benchmark's files), under
    'state_dict', or the file itself."""
    if isinstance(loaded, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), Mapping):
                return dict(loaded[key])
        if loaded and all(isinstance(value, Tensor) for value in loaded.values()):
            return dict(loaded)
    raise KdistillError(
        f"checkpoint '{path}' holds no state dict (expected one under 'model' or 'state_dict', or a bare one): "
        f"save it with torch.save(model.state_dict(), path)"
    )


def _fill_missing_batch_counters(state_dict: dict[str, Tensor], model_state: dict[str, Tensor]) -> None:
    """Files from PyTorch < 0.4.1 lack BN's `num_batches_tracked`; take the model's own value
    where the file has that BN's other statistics."""
    for key, value in model_state.items():
        prefix = key.removesuffix("num_batches_tracked")
        if key.endswith("num_batches_tracked") and key not in state_dict and f"{prefix}running_mean" in state_dict:
            state_dict[key] = value


def _name_keys(keys: list[str]) -> str:
    more = f" (+{len(keys) - _ERROR_KEY_LIMIT} more)" if len(keys) > _ERROR_KEY_LIMIT else ""
    return ", ".join(keys[:_ERROR_KEY_LIMIT]) + more


def _mismatch_report(state_dict: dict[str, Tensor], model_state: dict[str, Tensor], strict: bool) -> str:
    """What keeps `state_dict` from loading into the model ('' if it fits)."""
    problems = []
    wrong_shape = [
        f"{key} (file {list(value.shape)}, model {list(model_state[key].shape)})"
        for key, value in state_dict.items()
        if key in model_state and value.shape != model_state[key].shape
    ]
    if strict:
        missing = [key for key in model_state if key not in state_dict]
        unexpected = [key for key in state_dict if key not in model_state]
        if missing:
            problems.append(f"missing {_name_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected {_name_keys(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shape {_name_keys(wrong_shape)}")
    return "; ".join(problems)


def _wraps_library_model(state_dict: dict) -> bool:
    return bool(state_dict) and all(key.startswith("model.") for key in state_dict)


def classifier_name(model: nn.Module) -> str | None:
    """Module name of the model's classifier (its last linear layer), if it has one."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True, allow_missing_head: bool = False) -> None:
    """Load a checkpoint file into `model` (in place).

    Accepts the benchmark's `<arch>_vanilla/ckpt_epoch_240.pth` files (state dict under
    'model'), a dict with 'state_dict', or a bare state dict; strips DataParallel's `module.`
    prefix and fills in BN counters that old files lack; plain timm/torchvision weight files load
    into their `timm:`/`tv:` adapters. `allow_missing_head` accepts a backbone-only file (e.g. a
    self-supervised ViT) whose classifier is absent: the model keeps its own. Raises KdistillError if the file
    is missing, unreadable, or does not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise KdistillError(f"checkpoint '{path}' not found: check the path")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean "unreadable"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise KdistillError(
            f"cannot read checkpoint '{path}' ({reason}): pass a file written by torch.save holding tensors only"
        ) from error
    state_dict = {key.removeprefix("module."): value for key, value in _state_dict_in(loaded, path).items()}
    model_state = model.state_dict()
    if _wraps_library_model(model_state) and not _wraps_library_model(state_dict):
        # A plain timm/torchvision weight file: the adapter holds that model as `.model`.
        state_dict = {f"model.{key}": value for key, value in state_dict.items()}
    _fill_missing_batch_counters(state_dict, model_state)
    head = classifier_name(model)
    if allow_missing_head and head is not None and not any(key.startswith(f"{head}.") for key in state_dict):
        state_dict.update({key: value for key, value in model_state.items() if key.startswith(f"{head}.")})
    problems = _mismatch_report(state_dict, model_state, strict)
    if problems:
        raise KdistillError(
            f"checkpoint '{path}' does not fit {type(model).__name__}: {problems}; "
            f"use a checkpoint of the same architecture and number of classes"
        )
    model.load_state_dict(state_dict, strict=strict)


__all__ = [
    "MODELS",
    "FeatureModel",
    "classifier_name",
    "Features",
    "create_model",
    "is_small_lr_model",
    "list_models",
    "load_checkpoint",
]
