"""Wide ResNets of the CRD benchmark: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Pre-activation blocks; parameter names match the benchmark's checkpoints: `conv1`,
`block1..3.layer.<i>` (`bn1`, `conv1`, `bn2`, `conv2`, `convShortcut` where the shape
changes), the final `bn1` and `fc`.
"""

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models._common import MODELS, conv3x3, global_pool, init_conv_he_normal
from kdistill.models.base import FeatureModel, Features


class WideBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        # camelCase because the checkpoints name it so.
        self.convShortcut = (
            None
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        # A projection takes the activated input; an identity shortcut the raw one.
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class WideGroup(nn.Module):
    """A group of blocks; a wrapper only because the checkpoint keys read `blockN.layer.<i>`."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, stride: int):
        super().__init__()
        blocks = [WideBlock(in_channels, out_channels, stride)]
        blocks += [WideBlock(out_channels, out_channels, 1) for _ in range(num_blocks - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _batch_norm_without_update(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """What `bn(x)` computes in the current mode, without updating the running statistics."""
    use_batch_stats = bn.training
    return F.batch_norm(
        x,
        None if use_batch_stats else bn.running_mean,
        None if use_batch_stats else bn.running_var,
        bn.weight,
        bn.bias,
        training=use_batch_stats,
        eps=bn.eps,
    )


class WideResNet(FeatureModel):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
        blocks_per_group = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes = num_classes
        self.conv1 = conv3x3(in_chans, widths[0])
        self.block1 = WideGroup(widths[0], widths[1], blocks_per_group, stride=1)
        self.block2 = WideGroup(widths[1], widths[2], blocks_per_group, stride=2)
        self.block3 = WideGroup(widths[2], widths[3], blocks_per_group, stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_he_normal(self)
        nn.init.zeros_(self.fc.bias)

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        stem = self.conv1(x)
        out1 = self.block1(stem)
        out2 = self.block2(out1)
        out3 = self.block3(out2)
        final_normed = self.bn1(out3)
        pooled = global_pool(F.relu(final_normed))
        preacts = None
        if preact:
            # Pre-activation blocks: a stage's "pre-ReLU" map is its output after the BN that
            # opens the next block (as the benchmark defines it). Those BNs run again here
            # without touching their running statistics.
            preacts = [
                stem,
                _batch_norm_without_update(self.block2.layer[0].bn1, out1),
                _batch_norm_without_update(self.block3.layer[0].bn1, out2),
                final_normed,
            ]
        return Features(self.fc(pooled), [stem, out1, out2, out3], pooled, preacts)

    def preact_batch_norms(self) -> list[nn.BatchNorm2d]:
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


for _name, _depth, _widen in [("wrn_16_1", 16, 1), ("wrn_16_2", 16, 2), ("wrn_40_1", 40, 1), ("wrn_40_2", 40, 2)]:
    MODELS.register(_name)(partial(WideResNet, _depth, _widen))
