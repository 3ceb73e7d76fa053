"""The one feature interface every model (zoo, timm, torchvision) reports through."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn


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


class FeatureModel(nn.Module):
    """Base of every model: `forward(x)` gives logits, `extract(x)` gives `Features`."""

    num_classes: int

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        raise NotImplementedError

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
