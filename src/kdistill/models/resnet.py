"""CIFAR ResNets of the CRD benchmark: resnet8 ... resnet110, resnet8x4, resnet32x4.

Parameter names match the benchmark's checkpoints: `conv1`, `bn1`, `layer1..3` of basic
blocks (`conv1`, `bn1`, `conv2`, `bn2`, `downsample.0/1` where the shape changes) and `fc`.
"""

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models._common import (
    MODELS,
    PreactBlock,
    conv3x3,
    global_pool,
    init_conv_he_normal,
    projection_shortcut,
    run_stages,
)
from kdistill.models.base import FeatureModel, Features


class BasicBlock(PreactBlock):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        needs_projection = stride != 1 or in_channels != channels
        self.downsample = projection_shortcut(in_channels, channels, stride) if needs_projection else None

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        return F.relu(preact), preact


def _stage(in_channels: int, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, channels, stride)]
    blocks += [BasicBlock(channels, channels, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class CifarResNet(FeatureModel):
    """3x3 stem, three stages of basic blocks (strides 1, 2, 2), global pooling, linear head."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        stem_width, width1, width2, width3 = widths
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.layer1 = _stage(stem_width, width1, blocks_per_stage, stride=1)
        self.layer2 = _stage(width1, width2, blocks_per_stage, stride=2)
        self.layer3 = _stage(width2, width3, blocks_per_stage, stride=2)
        self.fc = nn.Linear(width3, num_classes)
        init_conv_he_normal(self)

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        stem = F.relu(self.bn1(self.conv1(x)))
        stages, preacts = run_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled = global_pool(stages[-1])
        return Features(self.fc(pooled), stages, pooled, preacts if preact else None)

    def preact_batch_norms(self) -> list[nn.BatchNorm2d]:
        return [layer[-1].bn2 for layer in (self.layer1, self.layer2, self.layer3)]


_CONFIGS = {
    # name: (depth, (stem width, stage widths))
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}

for _name, (_depth, _widths) in _CONFIGS.items():
    MODELS.register(_name)(partial(CifarResNet, _depth, _widths))
