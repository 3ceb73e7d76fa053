"""The model zoo: the CRD benchmark's CIFAR models, plus timm/torchvision adapters.

`create_model("resnet32x4")` builds a zoo model; `create_model("timm:<name>")` and
`create_model("tv:<name>")` build untrained timm / torchvision classifiers (see `adapters`).
"""

from kdistill.errors import KdistillError
from kdistill.models import (  # noqa: F401 (importing registers the zoo)
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from kdistill.models._common import MODELS
from kdistill.models.adapters import TimmModel, TorchvisionModel
from kdistill.models.base import FeatureModel, Features
from kdistill.models.checkpoint import classifier_name, load_checkpoint

TIMM_PREFIX = "timm:"
TV_PREFIX = "tv:"


def create_model(name: str, num_classes: int = 100, in_chans: int = 3, pretrained: bool = False,
                 **options) -> FeatureModel:
    """Build a model by zoo name, `timm:<name>[.<tag>]` or `tv:<name>[:<WEIGHTS_NAME>]`.

    `options` go to `timm.create_model` / the torchvision builder (e.g. `img_size=32,
    patch_size=4` for a timm ViT); zoo models take none. `pretrained` loads the library's
    weights (`kdistill.models.pretrained`).
    """
    if name.startswith(TIMM_PREFIX):
        return TimmModel(name.removeprefix(TIMM_PREFIX), num_classes, in_chans, pretrained, **options)
    if name.startswith(TV_PREFIX):
        return TorchvisionModel(name.removeprefix(TV_PREFIX), num_classes, in_chans, pretrained, **options)
    if pretrained:
        raise KdistillError(f"model '{name}' has no library weights (only timm: and tv: models have, and as a "
                            f"teacher the published CIFAR-100 ones: `kdistill list --teachers`): give a weight file "
                            f"as teacher_checkpoint= / student_checkpoint= instead")
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


__all__ = [
    "MODELS",
    "FeatureModel",
    "classifier_name",
    "Features",
    "create_model",
    "list_models",
    "load_checkpoint",
]
