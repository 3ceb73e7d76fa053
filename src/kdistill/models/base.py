"""The one feature interface every model (zoo, timm, torchvision) reports through."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdistill.errors import KdistillError


@dataclass
class Features:
    """What a model computed on one batch.

    `stages` follows the convention of the CRD benchmark's `is_feat=True` output, so the
    baselines take the same maps as the published tables: `stages[0]` is the stem output and
    `stages[1:]` are the outputs of the network's stages, in order; `pooled` is the
    penultimate feature after global pooling (the classifier's input). `preact` holds the
    same maps taken before their final ReLU, when asked for (activation-boundary methods);
    otherwise it is None.
    """

    logits: Tensor
    stages: list[Tensor]
    pooled: Tensor
    preact: list[Tensor] | None = None

    def map(self, fn) -> "Features":
        """The same features with `fn` applied to every tensor (e.g. `Tensor.clone`)."""
        return Features(fn(self.logits), [fn(stage) for stage in self.stages], fn(self.pooled),
                        None if self.preact is None else [fn(stage) for stage in self.preact])


@dataclass
class TokenSequence:
    """A model's features as one token sequence (what label-free methods compare)."""

    tokens: Tensor  # [B, 1 + N, D]: a CLS token, then N position tokens in row-major grid order
    grid: tuple[int, int]  # (height, width) of the position tokens
    logits: Tensor | None  # the model's logits when reading the tokens computed them, else None


class FeatureModel(nn.Module):
    """Base of every model: `forward(x)` gives logits, `extract(x)` gives `Features`, `tokens(x)`
    a `TokenSequence`."""

    num_classes: int
    # A DeiT distilled ViT: a distillation token with its own head beside the class token's;
    # `extract` gives the two heads' mean as the logits (DeiT's evaluation), `extract_heads` each.
    has_distillation_token: bool = False

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        raise NotImplementedError

    def extract_heads(self, x: Tensor) -> tuple[Features, Tensor, Tensor]:
        """`extract(x)` and the class head's and the distillation head's logits apart."""
        raise KdistillError(f"model {type(self).__name__} has no distillation token: use a timm DeiT distilled "
                            "ViT (e.g. timm:deit_tiny_distilled_patch16_224)")

    def preact_batch_norms(self) -> list[nn.BatchNorm2d]:
        """For each stage after the stem (`Features.preact[1:]`), the batch norm whose output is the
        stage's pre-ReLU map, or its residual branch's share of it where the stage ends in a sum (as
        mdistiller's `get_bn_before_relu`): OFD reads its margins from their affine parameters."""
        raise KdistillError(f"model {type(self).__name__} does not name the batch norm before each stage's ReLU, "
                            "which OFD reads its margins from: use a CIFAR ResNet, WRN, VGG, ResNet50, "
                            "MobileNetV2 or ShuffleV1 teacher")

    def tokens(self, x: Tensor) -> TokenSequence:
        """The pooled feature as the CLS token, then the positions of the last stage map (a ViT
        adapter gives its own tokens instead). Where the pooled feature's width differs from the
        map's channels (e.g. MobileNetV2 and ShuffleNetV2, whose pooled feature comes after a
        further layer), the map averaged over its positions is the CLS token, so every token has
        the map's width (the last stage's channels)."""
        features = self.extract(x)
        last_map = features.stages[-1]
        cls = features.pooled if features.pooled.shape[1] == last_map.shape[1] else last_map.mean(dim=(2, 3))
        positions = last_map.flatten(2).transpose(1, 2)
        return TokenSequence(torch.cat([cls[:, None], positions], dim=1), tuple(last_map.shape[-2:]), features.logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.extract(x).logits


@torch.no_grad()
def probe_features(model: FeatureModel, input_shape: tuple[int, int, int]) -> Features:
    """Run one 2-sample zero batch to read feature shapes (used to size method parts)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    features = model.extract(torch.zeros(2, *input_shape, device=param.device, dtype=param.dtype))
    model.train(was_training)
    return features


def probe_shapes(model: FeatureModel, input_shape: tuple[int, int, int]) -> Features:
    """`probe_features` as shape-only (meta) tensors: what a method reads to size its parts,
    probed once per model (`build_distiller`) and kept without holding memory."""
    features = probe_features(model, input_shape)

    def meta(tensor: Tensor) -> Tensor:
        return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")

    return Features(meta(features.logits), [meta(stage) for stage in features.stages], meta(features.pooled))
