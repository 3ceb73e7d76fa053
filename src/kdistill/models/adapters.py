"""timm (`timm:<name>`) and torchvision (`tv:<name>`) classifiers wrapped as FeatureModels.

Both are built untrained unless `pretrained=True` (then the library's weights, see
`kdistill.models.pretrained`). timm and torchvision are imported only when an adapter is built:
importing timm alone costs seconds, which zoo-only runs should not pay.

timm: `stages` are what the model's `forward_intermediates` returns with its defaults, in
NCHW: for CNNs usually the stem output then each stage's output (timm ResNets: stem after
its ReLU, layer1..4); for ViTs every block's patch tokens as a grid (prefix tokens
dropped). `pooled` is `forward_head(pre_logits=True)`. A DeiT distilled ViT (`deit_*_distilled_*`)
has a class and a distillation token, each with its head: its logits are the mean of the two
heads' (as timm's and DeiT's inference), `pooled` the mean of the two tokens.

torchvision: a supported CNN's trunk (the modules before global pooling and the head, with
containers such as `features` opened up) is cut into runs of equal resolution at each
module that down-samples (strided conv or pooling); `stages` are the outputs of the last
non-pooling module of each run, read with forward hooks. `stages[0]` is the first run's
output: the stem (ResNets: after its ReLU), or stem plus first stage where the model does
not down-sample between them (ConvNeXt, EfficientNet, MobileNet). `pooled` is the head's
input, flattened.

Neither library exposes maps before the final ReLU of a stage, so `preact=True` returns
`preact = stages`.
"""

import math
from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import Tensor, nn

from kdistill.errors import KdistillError, closest_names
from kdistill.models.base import FeatureModel, Features, TokenSequence
from kdistill.models.pretrained import (
    load_torchvision_pretrained,
    report_timm_head,
    split_weights_name,
    timm_missing_weights,
    timm_pretrained_cfg,
)

# torchvision classifiers whose trunk layout the stage rule above handles.
TV_FAMILIES = (
    "convnext",
    "densenet",
    "efficientnet",
    "mnasnet",
    "mobilenet",
    "regnet",
    "resnet",
    "resnext",
    "shufflenet",
    "vgg",
    "wide_resnet",
)
_TV_TRUNK_CONTAINERS = ("features", "trunk_output", "layers")
_TV_HEADS = ("fc", "classifier")


def _unknown_library_model(library: str, name: str, choices: Iterable[str], listing: str) -> KdistillError:
    close = closest_names(name, choices)
    hint = f"did you mean {', '.join(close)}?" if close else f"{listing} lists the names"
    return KdistillError(f"unknown {library} model '{name}': {hint}")


def _build(library: str, name: str, builder: Callable[[], nn.Module], options: dict) -> nn.Module:
    try:
        return builder()
    except TypeError as error:  # an option the model's constructor does not take
        raise KdistillError(
            f"{library} model '{name}' rejects the options {sorted(options)} ({error}): remove them"
        ) from error


class TimmModel(FeatureModel):
    def __init__(self, name: str, num_classes: int = 100, in_chans: int = 3, pretrained: bool = False, **options):
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise _unknown_library_model("timm", name, timm.list_models(), "timm.list_models()")
        self.num_classes = num_classes
        pretrained_cfg = timm_pretrained_cfg(name) if pretrained else None
        build = partial(
            timm.create_model, name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **options
        )
        try:
            self.model = _build("timm", name, build, options)
        except OSError as error:  # only fetching weights reads files: offline, or a missing cache file
            raise timm_missing_weights(name, pretrained_cfg, error) from None
        if pretrained:
            report_timm_head(name, pretrained_cfg, num_classes)
        if not hasattr(self.model, "forward_intermediates"):
            raise KdistillError(
                f"timm model '{name}' has no forward_intermediates, so its stages cannot be read: pick another model"
            )
        self.has_distillation_token = hasattr(self.model, "head_dist")

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        if self.has_distillation_token:
            features, _, _ = self.extract_heads(x)
            return Features(features.logits, features.stages, features.pooled,
                            list(features.stages) if preact else None)
        final, stages = self.model.forward_intermediates(x)
        # The classifier runs once, on the pooled feature (timm's forward_head = pre-logits, then
        # the classifier), so head dropout draws one mask for both outputs.
        pooled = self.model.forward_head(final, pre_logits=True)
        logits = self.model.get_classifier()(pooled)
        return Features(logits, stages, pooled, list(stages) if preact else None)

    def extract_heads(self, x: Tensor) -> tuple[Features, Tensor, Tensor]:
        """A DeiT distilled ViT's features (logits: the mean of both heads') and the class and
        distillation heads' logits, from the class and distillation tokens (as timm's
        `VisionTransformerDistilled.forward_head`)."""
        if not self.has_distillation_token:
            return super().extract_heads(x)
        final, stages = self.model.forward_intermediates(x)
        class_token, distillation_token = self.model.head_drop(final[:, 0]), self.model.head_drop(final[:, 1])
        class_logits, distillation_logits = self.model.head(class_token), self.model.head_dist(distillation_token)
        features = Features((class_logits + distillation_logits) / 2, stages, (class_token + distillation_token) / 2)
        return features, class_logits, distillation_logits

    def tokens(self, x: Tensor) -> TokenSequence:
        """A ViT's final-normed tokens, class token first, register tokens dropped (its logits are
        not computed); other timm models: the CNN default of `FeatureModel.tokens`."""
        if getattr(self.model, "cls_token", None) is None:
            return super().tokens(x)
        tokens = self.model.forward_features(x)
        # Register tokens (if any) sit between the class token and the patch tokens.
        tokens = torch.cat([tokens[:, :1], tokens[:, self.model.num_prefix_tokens :]], dim=1)
        return TokenSequence(tokens, _vit_grid(tokens.shape[1] - 1, x.shape[-2], x.shape[-1]), None)


def _vit_grid(num_patches: int, image_height: int, image_width: int) -> tuple[int, int]:
    """The patch grid of a ViT: `num_patches` tokens in the image's aspect ratio."""
    height = round(math.sqrt(num_patches * image_height / image_width))
    if height == 0 or num_patches % height:
        raise KdistillError(f"{num_patches} patch tokens do not tile a {image_height}x{image_width} image: "
                            "use a ViT whose patches tile the input")
    return height, num_patches // height


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """Swap the stem conv for one taking `in_chans` channels (freshly initialised)."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attribute = name.rpartition(".")
    replacement = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
    )
    setattr(model.get_submodule(parent_name), attribute, replacement)


def _downsamples(module: nn.Module) -> bool:
    for inner in module.modules():
        if isinstance(inner, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = inner.stride if isinstance(inner.stride, tuple) else (inner.stride,)
            if max(stride) > 1:
                return True
    return False


def _tv_trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules run in order before global pooling and the head."""
    trunk = []
    for name, child in model.named_children():
        if name in _TV_HEADS or isinstance(child, nn.AdaptiveAvgPool2d):
            break
        if name in _TV_TRUNK_CONTAINERS:
            trunk += [(f"{name}.{inner_name}", inner) for inner_name, inner in child.named_children()]
        else:
            trunk.append((name, child))
    return trunk


def _tv_stage_names(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are the stages (see the module docstring)."""
    stage_names: list[str] = []
    run_end: str | None = None
    for name, module in _tv_trunk(model):
        if run_end is not None and _downsamples(module):
            stage_names.append(run_end)
            run_end = None
        # A pooling layer alone at a resolution (e.g. VGG's last max-pool) is no stage.
        if not isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            run_end = name
    if run_end is not None:
        stage_names.append(run_end)
    return stage_names


class TorchvisionModel(FeatureModel):
    def __init__(self, name: str, num_classes: int = 100, in_chans: int = 3, pretrained: bool = False, **options):
        super().__init__()
        from torchvision import models

        # A weights name matters only with `pretrained`; otherwise (e.g. a teacher_checkpoint file
        # of that architecture) the model is the architecture alone.
        name, weights_name = split_weights_name(name)
        available = models.list_models(module=models)
        if name not in available:
            raise _unknown_library_model("torchvision", name, available, "torchvision.models.list_models()")
        if not name.startswith(TV_FAMILIES):
            raise KdistillError(
                f"tv:{name} is not supported (the adapter knows the CNN families {', '.join(TV_FAMILIES)}): "
                f"use timm:<name> for it"
            )
        self.num_classes = num_classes
        build = partial(models.get_model, name, weights=None, num_classes=num_classes, **options)
        self.model = _build("torchvision", name, build, options)
        if in_chans != 3:
            _replace_first_conv(self.model, in_chans)
        if pretrained:
            load_torchvision_pretrained(self.model, name, weights_name)
        self.stage_names = _tv_stage_names(self.model)
        self.head_name = next(head for head in _TV_HEADS if hasattr(self.model, head))

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        captured: dict[str, Tensor] = {}

        def keep_output(name, _module, _inputs, output):
            captured[name] = output

        def keep_head_input(_module, inputs):
            captured["pooled"] = inputs[0].flatten(1)

        # Hooks live only for this call, so copies of the model (e.g. an EMA teacher) stay clean.
        handles = [
            self.model.get_submodule(name).register_forward_hook(partial(keep_output, name))
            for name in self.stage_names
        ]
        handles.append(self.model.get_submodule(self.head_name).register_forward_pre_hook(keep_head_input))
        try:
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        stages = [captured[name] for name in self.stage_names]
        return Features(logits, stages, captured["pooled"], list(stages) if preact else None)
