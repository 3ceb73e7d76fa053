"""The CRD benchmark's half-width CIFAR MobileNetV2 (`mobile_half`: expansion 6, width 0.5).

Parameter names match the benchmark's checkpoints: `conv1` (conv, BN, ReLU), `blocks.<stage>.<i>.conv`
(expand 1x1, BN, ReLU, depthwise 3x3, BN, ReLU, project 1x1, BN; the expand conv is kept even
at expansion 1), `conv2` (1x1 conv to 1280, BN, ReLU) and `classifier.0`.
"""

from torch import Tensor, nn

from kdistill.models._common import MODELS, global_pool, init_conv_he_normal
from kdistill.models.base import FeatureModel, Features

EXPANSION = 6
WIDTH_MULT = 0.5
LAST_CHANNELS = 1280  # not scaled: the benchmark scales it only for widths above 1
# (expansion, output channels at width 1, blocks, first stride) per stage.
STAGE_SETTINGS = [
    (1, 16, 1, 1),
    (EXPANSION, 24, 2, 1),
    (EXPANSION, 32, 3, 2),
    (EXPANSION, 64, 4, 2),
    (EXPANSION, 96, 3, 1),
    (EXPANSION, 160, 3, 2),
    (EXPANSION, 320, 1, 1),
]
# The benchmark reports these stages' outputs as features (after the stem).
FEATURE_STAGES = (1, 2, 4, 6)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_channels, hidden, 1, 1),
            nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            # Linear bottleneck: no ReLU after the projection.
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


@MODELS.register("MobileNetV2", "mobilenetv2", "mobile_half")
class MobileNetV2(FeatureModel):
    def __init__(self, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        in_channels = int(32 * WIDTH_MULT)
        self.conv1 = _conv_bn_relu(in_chans, in_channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for expansion, channels, num_blocks, first_stride in STAGE_SETTINGS:
            out_channels = int(channels * WIDTH_MULT)
            stage = []
            for stride in [first_stride] + [1] * (num_blocks - 1):
                stage.append(InvertedResidual(in_channels, out_channels, stride, expansion))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        self.conv2 = _conv_bn_relu(in_channels, LAST_CHANNELS, 1, stride=1)
        self.classifier = nn.Sequential(nn.Linear(LAST_CHANNELS, num_classes))
        init_conv_he_normal(self)
        nn.init.normal_(self.classifier[0].weight, std=0.01)
        nn.init.zeros_(self.classifier[0].bias)

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        out = self.conv1(x)
        stages = [out]
        for index, stage in enumerate(self.blocks):
            out = stage(out)
            if index in FEATURE_STAGES:
                stages.append(out)
        pooled = global_pool(self.conv2(out))
        # The stages end in a linear BN (no ReLU), so their pre-activation maps are the maps.
        return Features(self.classifier(pooled), stages, pooled, list(stages) if preact else None)

    def preact_batch_norms(self) -> list[nn.BatchNorm2d]:
        return [self.blocks[index][-1].conv[-1] for index in FEATURE_STAGES]
