"""The CIFAR bottleneck ResNet-50 the CRD benchmark uses as a teacher (`ResNet50`).

Unlike the ImageNet ResNet-50 it has a 3x3 stride-1 stem and no max-pool. Parameter names
match the benchmark's checkpoints: `conv1`, `bn1`, `layer1..4` of bottlenecks (`conv1..3`,
`bn1..3`, `shortcut.0/1` where the shape changes) and `linear`.
"""

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

EXPANSION = 4  # a bottleneck's output has 4x its inner width


class Bottleneck(PreactBlock):
    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = projection_shortcut(in_channels, out_channels, stride) if needs_projection else nn.Identity()

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


def _stage(in_channels: int, width: int, num_blocks: int, stride: int) -> nn.Sequential:
    blocks = [Bottleneck(in_channels, width, stride)]
    blocks += [Bottleneck(width * EXPANSION, width, 1) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


@MODELS.register("ResNet50", "resnet50")
class ResNet50(FeatureModel):
    def __init__(self, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = conv3x3(in_chans, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _stage(64, 64, 3, stride=1)
        self.layer2 = _stage(64 * EXPANSION, 128, 4, stride=2)
        self.layer3 = _stage(128 * EXPANSION, 256, 6, stride=2)
        self.layer4 = _stage(256 * EXPANSION, 512, 3, stride=2)
        self.linear = nn.Linear(512 * EXPANSION, num_classes)
        init_conv_he_normal(self)

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        stem = F.relu(self.bn1(self.conv1(x)))
        stages, preacts = run_stages(stem, (self.layer1, self.layer2, self.layer3, self.layer4))
        pooled = global_pool(stages[-1])
        return Features(self.linear(pooled), stages, pooled, preacts if preact else None)

    def preact_batch_norms(self) -> list[nn.BatchNorm2d]:
        return [layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
