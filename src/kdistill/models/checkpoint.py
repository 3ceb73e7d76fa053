"""Weight files: the one module that reads and writes them.

Reading accepts the benchmark's `<arch>_vanilla/ckpt_epoch_240.pth` files (state dict under
'model'), a dict with 'state_dict', a bare state dict, or a `.safetensors` file (what
`kdistill export` writes); it strips DataParallel's `module.`
prefix, fills in BN counters that old files lack, and loads plain timm/torchvision weight files
into their `timm:`/`tv:` adapters. Files are read with `weights_only=True`, so a weight file
cannot run code. Writing is atomic (`kdistill.files`): a crash or a full disk mid-write never
leaves a broken or missing file.
"""

import hashlib
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdistill.errors import KdistillError, first_line, missing_path_hint
from kdistill.files import atomic_write, atomic_write_bytes

SAFETENSORS_SUFFIX = ".safetensors"
_ERROR_KEY_LIMIT = 3  # keys named per kind of mismatch in an error message
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch words this two ways


def atomic_save(obj: Any, path: Path, intact: str | None = None) -> None:
    """`torch.save` through the atomic writer (`kdistill.files.atomic_write`): a failed write,
    torch-wrapped or not, is one line naming the file and what is `intact`."""
    atomic_write(path, lambda file: torch.save(obj, file), intact=intact)


def save_model_weights(model: nn.Module, path: Path, intact: str | None = None, **info: Any) -> None:
    """The public teacher format (`{'model': state_dict, ...}`), so a trained model loads as a teacher."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"model": state, **info}, path, intact)


def save_safetensors(state_dict: Mapping[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A state dict as a safetensors file (tensors and string metadata only: loading it runs no
    code). Tensors are copied, so weights shared between two keys are stored under both."""
    from safetensors.torch import save

    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}
    atomic_write_bytes(path, save(tensors, metadata))


def read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise UnreadableCheckpoint(path, f"not a readable safetensors file: {first_line(error)}") from None


class UnreadableCheckpoint(KdistillError):
    """A torch file that cannot be read; `reason` says why in a few words."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot read checkpoint '{path}' ({reason}): "
                         "pass a file written by torch.save holding tensors only")
        self.reason = reason


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why torch.load(weights_only=True) failed on `path`, in words that fit one line (and
    without torch's advice to retry with weights_only=False, which would run the file's code)."""
    message = str(error)
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    if "PytorchStreamReader" in message or "zip archive" in message:
        return "the file is truncated or damaged (its zip archive cannot be read)"
    refused = _REFUSED_GLOBAL.search(message)
    if refused:
        return f"it holds a Python object ({refused.group(1)}), not tensors only; refused, none of its code ran"
    if "Weights only load failed" in message:
        return "it is not a file of tensors written by torch.save (damaged, or another format)"
    return first_line(error)


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """A torch file's content, tensors and plain containers only; one-line error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise KdistillError(f"checkpoint '{path}' not found{missing_path_hint(path)}: check the path")
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it then reads or refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; all mean "unreadable"
        raise UnreadableCheckpoint(path, unreadable_reason(path, error)) from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a weight file (torch or safetensors), `module.` prefixes removed."""
    path = Path(path)
    safetensors = path.suffix == SAFETENSORS_SUFFIX and path.is_file()
    loaded = read_safetensors(path) if safetensors else read_torch_file(path)
    return {key.removeprefix("module."): value for key, value in _state_dict_in(loaded, Path(path)).items()}


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


def _as_model_keys(state_dict: dict[str, Tensor], model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A plain timm/torchvision weight file's keys as its adapter names them (it holds the model as `.model`)."""
    if _wraps_library_model(model_state) and not _wraps_library_model(state_dict):
        return {f"model.{key}": value for key, value in state_dict.items()}
    return dict(state_dict)


def stored_classes(state_dict: dict[str, Tensor], model: nn.Module) -> int | None:
    """Class count of a weight file, read off the weight of the model's classifier (None: no head in it)."""
    head = classifier_name(model)
    if head is None:
        return None
    weight = _as_model_keys(state_dict, model.state_dict()).get(f"{head}.weight")
    return None if weight is None else int(weight.shape[0])


def load_state_into(model: nn.Module, state_dict: dict[str, Tensor], path: str | Path, strict: bool = True,
                    allow_missing_head: bool = False) -> None:
    """Load a state dict read from `path` into `model` (in place), or say in one line why it does not fit.

    `allow_missing_head` accepts a backbone-only file (e.g. a self-supervised ViT) whose
    classifier is absent: the model keeps its own."""
    model_state = model.state_dict()
    state_dict = _as_model_keys(state_dict, model_state)
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


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True, allow_missing_head: bool = False) -> None:
    """Load a weight file into `model` (in place); KdistillError if it is missing, unreadable or does not fit."""
    load_state_into(model, read_state_dict(path), path, strict, allow_missing_head)


def weights_sha256(model: torch.nn.Module) -> str:
    """A checksum of the model's weights (names and bytes): the same for the same weights in any
    file format, and defined for library-pretrained teachers that have no file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
