"""DeiT's training augmentation (the ViT recipes of TinTeM's and Proteus' reference code), built by
timm's transform factory, with every random choice keyed by (seed, epoch, view).

timm's transforms draw from Python's `random`, NumPy's and torch's global generators. Before a
sample is transformed, all three are seeded from the keyed generator of `kdistill.data.augment`
(and restored afterwards), so a sample's view does not depend on the worker, the batch, or what
the process drew before. The view id is the sample index, plus `repeat * len(data set)` for the
repeats of repeated augmentation, so each repeat of a sample gets a view of its own.

The pipeline is timm's `transforms_imagenet_train`: random-resized crop (scale 0.08-1) with the
chosen interpolation, horizontal flip, RandAugment (`rand-m9-mstd0.5-inc1` in the recipes; timm
leaves ColorJitter out when RandAugment is on, as DeiT), to tensor, normalisation, random erasing
(pixel noise). As the reference, images of at most 32 px take a pad-4 random crop instead.
"""

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from kdistill.config import DataConfig
from kdistill.data.augment import Stream, keyed_bits
from kdistill.data.sources import ImageFiles
from kdistill.data.streaming import read_rgb
from kdistill.errors import KdistillError

SMALL_IMAGE_SIDE = 32  # the reference's threshold for a pad-4 crop instead of a resized crop
SMALL_IMAGE_PAD = 4
ERASING_MODE = "pixel"  # random erasing fills with per-pixel normal noise (DeiT's remode)


@contextmanager
def seeded_global_generators(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global generators seeded with `seed` inside the block,
    and restored to their previous state after it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def deit_transform(cfg: DataConfig, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    """timm's DeiT-style train transform: PIL image -> normalised float tensor [3, S, S]."""
    from timm.data import create_transform
    from torchvision import transforms

    transform = create_transform(
        input_size=image_size, is_training=True, color_jitter=cfg.color_jitter, auto_augment=cfg.rand_augment or None,
        interpolation=cfg.interpolation or "bilinear", re_prob=cfg.random_erasing, re_mode=ERASING_MODE, re_count=1,
        mean=tuple(mean), std=tuple(std),
    )
    if image_size <= SMALL_IMAGE_SIDE:
        transform.transforms[0] = transforms.RandomCrop(image_size, padding=SMALL_IMAGE_PAD)
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize_keeping_zero_bits
    return transform


def _posterize_keeping_zero_bits(image: Image.Image, bits: int, **_) -> Image.Image:
    """timm's posterize, where keeping 0 bits gives a black image as Pillow before 13 did (the
    reference's result); Pillow 13 rejects 0 bits, which "inc1" RandAugment draws at magnitude 10."""
    if bits >= 8:
        return image
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)


def view_seed(seed: int, epoch: int, view: int) -> int:
    """The seed of the global generators for one view of one sample in one epoch."""
    return int(keyed_bits(seed, epoch, view, Stream.DEIT_SEED))


class DeitFileDataset(Dataset):
    """A streamed train split through `deit_transform`: key (view, epoch) -> (normalised float
    image [3, S, S], label, sample index), with index = view mod the split's size."""

    normalized = True  # the loader must not normalise again

    def __init__(self, files: ImageFiles, transform: Callable, seed: int):
        self.files, self.transform, self.seed = files, transform, seed

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor, int] | KdistillError:
        """The sample, or the error of an image that cannot be decoded (see `collate_or_error`)."""
        view, epoch = key
        index = view % len(self)
        try:
            image = F.to_pil_image(read_rgb(self.files.paths[index], self.files.checked))
        except KdistillError as error:
            return error
        with seeded_global_generators(view_seed(self.seed, epoch, view)):
            return self.transform(image), self.files.labels[index], index
