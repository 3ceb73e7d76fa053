"""Pretrained weights of `timm:` and `tv:` models, fetched and cached by their own libraries.

timm: `timm:<name>[.<tag>]` loads timm's pretrained weights of that tag (the default tag without
one) through timm, which caches them with huggingface_hub (`$HF_HOME/hub`) or, for the few models
hosted elsewhere, in torch's hub folder. torchvision: `tv:<name>` loads the builder's default
weights, `tv:<name>:<WEIGHTS_NAME>` the named ones (e.g. `tv:resnet50:IMAGENET1K_V1`), cached in
`$TORCH_HOME/hub/checkpoints` as torchvision does.

The classifier is kept when the data set has the weights' class count and replaced by a freshly
initialised one otherwise; which of the two happened is printed. Without a network, a missing file
is a one-line error naming the URL and where to put it.

`preprocessing(name)` gives the library's evaluation preprocessing of the weights (mean/std,
crop size, crop fraction, interpolation) without building the model.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from kdistill.errors import KdistillError
from kdistill.models.cifar_teachers import CIFAR100_TEACHERS, TEACHERS_URL, member_name

WEIGHTS_SEPARATOR = ":"  # tv:<name>:<WEIGHTS_NAME>
HF_WEIGHTS_FILE = "model.safetensors"  # the file timm asks the hub for first
HF_REVISION = "main"

# The library teachers of the ImageNet recipes (configs/imagenet/): their weights are fetched by
# `teacher_pretrained=true`.
RECIPE_TEACHERS = ("tv:resnet34:IMAGENET1K_V1", "tv:resnet50:IMAGENET1K_V1", "timm:vit_small_patch14_dinov2.lvd142m")


@dataclass(frozen=True)
class Preprocessing:
    """A library's evaluation transform: resize the shorter side to image_size / crop_pct with
    `interpolation`, center-crop image_size, normalise with mean and std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    crop_pct: float
    interpolation: str


def _report(message: str) -> None:
    print(f"kdistill: {message}", file=sys.stderr, flush=True)


def _reason(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---- torchvision -------------------------------------------------------------------------

def split_weights_name(name: str) -> tuple[str, str | None]:
    """'resnet50:IMAGENET1K_V1' -> ('resnet50', 'IMAGENET1K_V1'); 'resnet50' -> ('resnet50', None)."""
    arch, _, weights_name = name.partition(WEIGHTS_SEPARATOR)
    return arch, weights_name or None


def torchvision_weights(arch: str, weights_name: str | None):
    """The torchvision weights enum member: the builder's DEFAULT, or the one named."""
    from torchvision import models

    try:
        weights_enum = models.get_model_weights(arch)
    except (KeyError, ValueError):
        raise KdistillError(f"tv:{arch} has no pretrained weights in torchvision: leave pretrained off") from None
    if weights_name is None:
        return weights_enum.DEFAULT
    if weights_name not in weights_enum.__members__:
        choices = ", ".join(name for name in weights_enum.__members__ if name != "DEFAULT")
        raise KdistillError(f"tv:{arch} has no weights '{weights_name}': use one of {choices}")
    return weights_enum[weights_name]


def torchvision_weights_file(weights) -> Path:
    """Where torchvision caches (and looks for) the file of `weights`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _torchvision_state_dict(weights) -> dict[str, Tensor]:
    try:  # reads the cached file when it is there, downloads it otherwise
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", weights_only=True,
                                                  progress=False)
    except OSError as error:  # no network (URLError is an OSError), or an unwritable cache
        raise KdistillError(f"cannot fetch the weights {weights} ({_reason(error)}): "
                            f"put {weights.url} at {torchvision_weights_file(weights)}") from None


def _last_linear(model: nn.Module) -> str:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1]


def _first_conv(model: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def load_torchvision_pretrained(model: nn.Module, arch: str, weights_name: str | None) -> None:
    """Load torchvision's pretrained weights into `model` (torchvision's `arch` built without
    weights, possibly with another class count or input channel count), in place."""
    weights = torchvision_weights(arch, weights_name)
    state = _torchvision_state_dict(weights)
    head = _last_linear(model)
    own = model.state_dict()
    conv_weight = f"{_first_conv(model)}.weight"
    if state[conv_weight].shape != own[conv_weight].shape:  # another input channel count: timm's adaptation
        from timm.models import adapt_input_conv

        state[conv_weight] = adapt_input_conv(own[conv_weight].shape[1], state[conv_weight])
    weight_classes = len(weights.meta["categories"])
    model_classes = own[f"{head}.weight"].shape[0]
    kept = weight_classes == model_classes
    if not kept:
        state = {key: value for key, value in state.items() if not key.startswith(f"{head}.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith(f"{head}.") for key in missing) or (kept and missing):
        raise KdistillError(f"the weights {weights} do not fit tv:{arch} (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}): drop the model options that change its layers")
    _report(f"tv:{arch}: pretrained {weights}, " + (
        f"classifier kept ({weight_classes} classes)" if kept else
        f"classifier replaced (the weights have {weight_classes} classes, the data {model_classes})"))


# ---- timm --------------------------------------------------------------------------------

def timm_pretrained_cfg(name: str):
    """timm's pretrained config of `name` (its default tag without one); an error if it has none."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        arch = name.partition(".")[0]
        raise KdistillError(f"timm model '{name}' has no pretrained weights: pick a tag that has, "
                            f"see timm.list_pretrained('{arch}*')")
    return cfg


def timm_weights_location(cfg) -> tuple[str, Path]:
    """(URL, cached file) of a timm pretrained config's weights, where timm's loader looks."""
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        repo, _, revision = cfg.hf_hub_id.partition("@")
        folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        revision = revision or HF_REVISION
        url = f"{constants.ENDPOINT}/{repo}/resolve/{revision}/{HF_WEIGHTS_FILE}"
        return url, folder / "snapshots" / revision / HF_WEIGHTS_FILE
    return cfg.url, Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name


def timm_missing_weights(name: str, cfg, error: BaseException) -> KdistillError:
    url, file = timm_weights_location(cfg)
    if cfg.hf_hub_id:  # the hub cache finds a snapshot through refs/<revision>
        refs = file.parent.parent.parent / "refs" / file.parent.name
        where = f"{file} (and the line '{file.parent.name}' in {refs})"
    else:
        where = str(file)
    return KdistillError(f"cannot fetch the pretrained weights of timm:{name} ({_reason(error)}): "
                         f"put {url} at {where}")


def report_timm_head(name: str, cfg, num_classes: int) -> None:
    """timm keeps the classifier when the class counts match and starts a new one otherwise."""
    if cfg.num_classes == num_classes:
        _report(f"timm:{name}: pretrained weights, classifier kept ({num_classes} classes)")
    else:
        _report(f"timm:{name}: pretrained weights, classifier replaced "
                f"(the weights have {cfg.num_classes} classes, the data {num_classes})")


def pretrained_classes(name: str) -> int:
    """The class count of a `timm:` / `tv:` model's pretrained weights (0: a backbone without head)."""
    if name.startswith("timm:"):
        return int(timm_pretrained_cfg(name.removeprefix("timm:")).num_classes or 0)
    return len(torchvision_weights(*split_weights_name(name.removeprefix("tv:"))).meta["categories"])


# ---- preprocessing -----------------------------------------------------------------------

def preprocessing(name: str) -> Preprocessing | None:
    """The evaluation preprocessing of a `timm:` / `tv:` model's pretrained weights (None for zoo
    models, which have none)."""
    if name.startswith("timm:"):
        from timm.data import resolve_data_config

        config = resolve_data_config(pretrained_cfg=timm_pretrained_cfg(name.removeprefix("timm:")).to_dict())
        return Preprocessing(tuple(config["mean"]), tuple(config["std"]), int(config["input_size"][-1]),
                             float(config["crop_pct"]), str(config["interpolation"]))
    if name.startswith("tv:"):
        transform = torchvision_weights(*split_weights_name(name.removeprefix("tv:"))).transforms()
        crop, resize = transform.crop_size[0], transform.resize_size[0]
        return Preprocessing(tuple(transform.mean), tuple(transform.std), crop, crop / resize,
                             transform.interpolation.value)
    return None


# ---- published teachers ------------------------------------------------------------------

def published_teachers() -> list[tuple[str, str]]:
    """(model, URL of its weights) for the recipes' library teachers and the public CIFAR-100
    teachers (one archive, `kdistill.models.cifar_teachers`); nothing is downloaded."""
    rows = []
    for name in RECIPE_TEACHERS:
        if name.startswith("tv:"):
            rows.append((name, torchvision_weights(*split_weights_name(name.removeprefix("tv:"))).url))
        else:
            rows.append((name, timm_weights_location(timm_pretrained_cfg(name.removeprefix("timm:")))[0]))
    rows += [(f"{arch} (CIFAR-100)", f"{TEACHERS_URL} (member cifar_teachers/{member_name(arch)})")
             for arch in CIFAR100_TEACHERS]
    return rows
