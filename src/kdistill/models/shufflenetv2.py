"""The CRD benchmark's CIFAR ShuffleNet V2 (`ShuffleV2`: width 1, stages of 116/232/464).

Parameter names match the benchmark's checkpoints: `conv1`, `bn1` (a 1x1 stem to 24 channels,
full resolution), `layer1..3` (a down-sampling block `conv1..5`/`bn1..5`, then basic blocks
`conv1..3`/`bn1..3`), `conv2`, `bn2` (1x1 to 1024) and `linear`.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models._common import (
    MODELS,
    PreactBlock,
    channel_shuffle,
    global_pool,
    run_stages,
)
from kdistill.models.base import FeatureModel, Features

STEM_CHANNELS = 24
STAGE_CHANNELS = (116, 232, 464)
STAGE_BLOCKS = (3, 7, 3)  # basic blocks after each stage's down-sampling block
LAST_CHANNELS = 1024


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


def _depthwise3x3(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, groups=channels, bias=False)


class BasicBlock(PreactBlock):
    """Split the channels in half, transform one half, concatenate and shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = _conv1x1(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _depthwise3x3(half, stride=1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _conv1x1(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, transformed = x.chunk(2, dim=1)
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(transformed)))))
        branch = self.bn3(self.conv3(branch))
        out = channel_shuffle(torch.cat([kept, F.relu(branch)], dim=1), 2)
        # As in the benchmark, the pre-activation map is taken before the channel shuffle.
        preact = torch.cat([kept, branch], dim=1)
        return out, preact


class DownBlock(nn.Module):
    """Two stride-2 branches over the full input, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half = out_channels // 2
        # Left branch: depthwise, then pointwise.
        self.conv1 = _depthwise3x3(in_channels, stride=2)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = _conv1x1(in_channels, half)
        self.bn2 = nn.BatchNorm2d(half)
        # Right branch: pointwise, depthwise, pointwise.
        self.conv3 = _conv1x1(in_channels, half)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = _depthwise3x3(half, stride=2)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = _conv1x1(half, half)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


@MODELS.register("ShuffleV2", "shufflev2")
class ShuffleV2(FeatureModel):
    def __init__(self, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = _conv1x1(in_chans, STEM_CHANNELS)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        stages = []
        for out_channels, num_blocks in zip(STAGE_CHANNELS, STAGE_BLOCKS):
            blocks = [DownBlock(in_channels, out_channels)] + [BasicBlock(out_channels) for _ in range(num_blocks)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = _conv1x1(in_channels, LAST_CHANNELS)
        self.bn2 = nn.BatchNorm2d(LAST_CHANNELS)
        self.linear = nn.Linear(LAST_CHANNELS, num_classes)

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        stem = F.relu(self.bn1(self.conv1(x)))
        stages, preacts = run_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled = global_pool(F.relu(self.bn2(self.conv2(stages[-1]))))
        return Features(self.linear(pooled), stages, pooled, preacts if preact else None)
