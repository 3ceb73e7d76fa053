"""What a loader yields and every method, the Trainer and the evaluations read."""

from typing import NotRequired, TypedDict

import torch
from torch import Tensor


class Batch(TypedDict):
    image: Tensor  # [B, C, H, W] float, normalised: the main (weak) view
    index: Tensor  # [B] int64: each sample's index in its split (keys augmentation, memory banks, caches)
    label: NotRequired[Tensor]  # [B] int64; absent for unlabelled data
    image_strong: NotRequired[Tensor]  # [B, C, H, W]: the strong view, when the method asks for one

VIEWS = ("image", "image_strong")  # the keys that hold images


def channels_last_views(batch: Batch) -> Batch:
    """The batch with every view in channels_last memory format (NHWC), the other keys as they are."""
    return {key: value.contiguous(memory_format=torch.channels_last) if key in VIEWS else value
            for key, value in batch.items()}
