"""Pieces shared by the zoo files: the model registry and a few layer helpers."""

from collections.abc import Callable, Iterable

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models.base import FeatureModel
from kdistill.registry import Registry

# Factories called as `factory(num_classes=..., in_chans=...)`.
MODELS: Registry[Callable[..., FeatureModel]] = Registry("model")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN that matches a residual branch's channels and stride (keys `.0`, `.1`)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def global_pool(x: Tensor) -> Tensor:
    """Parameter-free global average pooling to [B, C]; works for any input resolution."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of `groups` groups so grouped convs see each other's outputs."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def init_conv_he_normal(model: nn.Module) -> None:
    """He-normal (fan-out) conv weights and zero conv biases, the benchmark's conv init."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class PreactBlock(nn.Module):
    """A block that can also report its output before the final ReLU (the benchmark's `preact`)."""

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (output, pre-activation output)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


def run_stages(stem: Tensor, stages: Iterable[nn.Sequential]) -> tuple[list[Tensor], list[Tensor]]:
    """Run stages in order from the stem output.

    Returns [stem, *stage outputs] and [stem, *stage pre-activations], where a stage's
    pre-activation is its last block's (a `PreactBlock`); computing it costs nothing extra.
    """
    outputs, preacts = [stem], [stem]
    x = stem
    for stage in stages:
        *leading, last = stage
        for block in leading:
            x = block(x)
        x, preact = last.forward_preact(x)
        outputs.append(x)
        preacts.append(preact)
    return outputs, preacts

