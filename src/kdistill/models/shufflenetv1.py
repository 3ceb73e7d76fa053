"""The CRD benchmark's CIFAR ShuffleNet V1 (`ShuffleV1`: 3 groups, stages of 240/480/960).

Parameter names match the benchmark's checkpoints: `conv1`, `bn1` (a 1x1 stem to 24 channels,
full resolution), `layer1..3` of bottlenecks (`conv1..3`, `bn1..3`) and `linear`.
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

GROUPS = 3
STEM_CHANNELS = 24
STAGE_CHANNELS = (240, 480, 960)
STAGE_BLOCKS = (4, 8, 4)


class Bottleneck(PreactBlock):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, plus a shortcut.

    A stride-2 block concatenates an average-pooled shortcut to its branch (so the branch
    produces out_channels - in_channels); a stride-1 block adds the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, first_groups: int):
        super().__init__()
        self.stride = stride
        self.first_groups = first_groups
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid_channels = branch_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(
            mid_channels, mid_channels, kernel_size=3, stride=stride, padding=1, groups=mid_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, branch_channels, kernel_size=1, groups=GROUPS, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        # A downsampling unit concatenates the pooled input; the others add it.
        preact = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1) if self.stride == 2 else out + x
        return F.relu(preact), preact


@MODELS.register("ShuffleV1", "shufflev1")
class ShuffleV1(FeatureModel):
    def __init__(self, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        stages = []
        for out_channels, num_blocks in zip(STAGE_CHANNELS, STAGE_BLOCKS):
            # The stem's 24 channels are too few to group, so the very first 1x1 conv is dense.
            first_groups = 1 if in_channels == STEM_CHANNELS else GROUPS
            blocks = [Bottleneck(in_channels, out_channels, 2, first_groups)]
            blocks += [Bottleneck(out_channels, out_channels, 1, GROUPS) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(in_channels, num_classes)

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        stem = F.relu(self.bn1(self.conv1(x)))
        stages, preacts = run_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled = global_pool(stages[-1])
        return Features(self.linear(pooled), stages, pooled, preacts if preact else None)

    def preact_batch_norms(self) -> list[nn.BatchNorm2d]:
        # Each stage ends in a stride-1 unit: its last BN plus the identity is the pre-ReLU map.
        return [layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3)]
