"""CIFAR VGGs with BN of the CRD benchmark: vgg8, vgg11, vgg13, vgg16, vgg19.

Parameter names match the benchmark's checkpoints: `block0..block4` (each a Sequential of
conv (with bias), BN, ReLU, ..., ending in a BN) and `classifier` (one linear layer on the
globally pooled 512 channels; no fully connected stack).
"""

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.models._common import MODELS, global_pool, init_conv_he_normal
from kdistill.models.base import FeatureModel, Features


def _conv_bn_stack(in_channels: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        conv = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    # The block ends at its last BN so the caller sees the map before the ReLU.
    return nn.Sequential(*layers[:-1])


class CifarVGG(FeatureModel):
    def __init__(self, block_widths: list[list[int]], num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        self.num_classes = num_classes
        blocks = []
        in_channels = in_chans
        for widths in block_widths:
            blocks.append(_conv_bn_stack(in_channels, widths))
            in_channels = widths[-1]
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        self.classifier = nn.Linear(in_channels, num_classes)
        init_conv_he_normal(self)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        # The benchmark max-pools after block0..block2, and after block3 only on 64-pixel
        # inputs (Tiny-ImageNet); on CIFAR block4 keeps block3's 4x4 resolution.
        pool_after = (True, True, x.shape[-2] == 64, False)
        stem = F.relu(self.block0(x))
        stages, preacts = [stem], [stem]
        out = F.max_pool2d(stem, 2)
        for block, pool in zip((self.block1, self.block2, self.block3, self.block4), pool_after):
            before_relu = block(out)
            out = F.relu(before_relu)
            stages.append(out)
            preacts.append(before_relu)
            if pool:
                out = F.max_pool2d(out, 2)
        pooled = global_pool(stages[-1])
        return Features(self.classifier(pooled), stages, pooled, preacts if preact else None)

    def preact_batch_norms(self) -> list[nn.BatchNorm2d]:
        return [block[-1] for block in (self.block1, self.block2, self.block3, self.block4)]


_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}

for _name, _widths in _CONFIGS.items():
    MODELS.register(_name)(partial(CifarVGG, _widths))
