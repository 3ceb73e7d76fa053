"""Counter-based randomness and the augmentations drawn from it.

Every random parameter of an augmentation is a pure function of (seed, epoch, sample index,
stream), where the stream names the random quantity. A sample's augmented view therefore
does not depend on the batch size, the shuffle order, the number of processes or workers,
or the device. The hash uses only integer tensor ops on values kept below 2**32, so int64
never overflows and right shifts never see a sign bit: CPU and CUDA give the same bits.
"""

import math
from enum import IntEnum

import torch
import torch.nn.functional as nnf
from torch import Tensor

MASK32 = 0xFFFFFFFF
CROP_PAD = 4  # the CIFAR recipe: zero-pad 4 pixels, crop back to the original size
RESIZED_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
RESIZED_CROP_ATTEMPTS = 10


class Stream(IntEnum):
    """One id per random quantity, so that no two quantities share values.

    Quantities drawn several times per sample use consecutive ids from their base (the
    resized crop's attempts); a new pipeline takes fresh ids above the ones here and
    above 128-162, which the strong view uses (`kdistill.data.two_view.StrongStream`).
    """

    CROP_TOP = 0
    CROP_LEFT = 1
    FLIP = 2
    SHUFFLE = 3
    VAL_SPLIT = 4
    BANK_SUBSET = 5  # the training samples an evaluation's feature bank keeps (`knn.bank_size`, `ood.bank_size`)
    RESIZED_CROP_AREA = 16  # + attempt
    RESIZED_CROP_LOG_RATIO = 32  # + attempt
    RESIZED_CROP_TOP = 48
    RESIZED_CROP_LEFT = 49
    DEIT_SEED = 64  # seeds the global generators timm's DeiT transform draws from (`kdistill.data.deit`)


def _mul32(x, factor: int):
    """(x * factor) mod 2**32 for 0 <= x, factor < 2**32, with every product below 2**49."""
    low = (x & 0xFFFF) * factor
    high = ((x >> 16) * factor) & 0xFFFF  # only its low 16 bits survive the shift into 32 bits
    return (low + (high << 16)) & MASK32


def _mix32(x):
    """A full-avalanche permutation of 32-bit values ("lowbias32"); works on ints and tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_bits(seed: int, epoch: int, index: Tensor | int, stream: Tensor | int) -> Tensor:
    """32 random bits (as int64 in [0, 2**32)) per element of `index` (broadcast with `stream`)."""
    index = torch.as_tensor(index, dtype=torch.int64)
    key = _mix32((seed & MASK32) ^ 0x9E3779B9)  # the constant keeps an all-zero key off zero
    for part in ((seed >> 32) & MASK32, epoch & MASK32):
        key = _mix32(key ^ part)
    if isinstance(stream, Tensor):
        stream = stream.to(index.device)
    key = _mix32(key ^ stream)
    return _mix32(key ^ (index & MASK32))


def keyed_uniform(seed: int, epoch: int, index: Tensor | int, stream: Tensor | int) -> Tensor:
    """Uniform float32 in [0, 1), keyed like `keyed_bits` (24 bits: exact in float32)."""
    return (keyed_bits(seed, epoch, index, stream) >> 8).to(torch.float32) * 2.0**-24


def keyed_randint(
    seed: int, epoch: int, index: Tensor | int, stream: Tensor | int, high: Tensor | int
) -> Tensor:
    """Integers uniform in [0, high) (int64; `high` may vary per element), keyed like `keyed_bits`."""
    return ((keyed_bits(seed, epoch, index, stream) >> 8) * high) >> 24


def keyed_flip(seed: int, epoch: int, index: Tensor | int) -> Tensor:
    """Whether each sample is mirrored (bool, probability 1/2)."""
    return keyed_uniform(seed, epoch, index, Stream.FLIP) < 0.5


def crop_flip_params(
    seed: int, epoch: int, index: Tensor, pad: int = CROP_PAD, hflip: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample: top and left of the crop in padded coordinates, and whether to flip."""
    top = keyed_randint(seed, epoch, index, Stream.CROP_TOP, 2 * pad + 1)
    left = keyed_randint(seed, epoch, index, Stream.CROP_LEFT, 2 * pad + 1)
    return top, left, keyed_flip(seed, epoch, index) & hflip


def crop_flip(images: Tensor, top: Tensor, left: Tensor, flip: Tensor, pad: int = CROP_PAD) -> Tensor:
    """Zero-pad each image by `pad`, crop it back to its size at (top, left), flip where asked.

    images: [B, C, H, W] (any dtype); top/left/flip: [B], one crop and flip per image. One
    gather over the flattened padded images does the whole batch (4x faster on a CPU than
    advanced indexing).
    """
    batch, channels, height, width = images.shape
    padded = nnf.pad(images, (pad, pad, pad, pad))
    rows = top[:, None] + torch.arange(height, device=images.device)  # [B, H]
    cols = left[:, None] + torch.arange(width, device=images.device)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # flipping the crop = reading it right to left
    pixels = (rows[:, :, None] * padded.shape[-1] + cols[:, None, :]).view(batch, 1, height * width)
    flat = padded.reshape(batch, channels, -1).gather(2, pixels.expand(batch, channels, height * width))
    return flat.view(batch, channels, height, width)


def resized_crop_params(
    seed: int, epoch: int, index: int, height: int, width: int
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w) for one sample, from keyed draws.

    Same algorithm: up to ten (area, aspect ratio) draws, the first that fits wins; else a
    center crop with the ratio clamped to the allowed range.
    """
    attempts = torch.arange(RESIZED_CROP_ATTEMPTS)
    area_draw = keyed_uniform(seed, epoch, index, Stream.RESIZED_CROP_AREA + attempts).double()
    ratio_draw = keyed_uniform(seed, epoch, index, Stream.RESIZED_CROP_LOG_RATIO + attempts).double()
    area_min, area_max = RESIZED_CROP_SCALE
    area = height * width * (area_min + (area_max - area_min) * area_draw)
    log_min, log_max = math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1])
    ratio = torch.exp(log_min + (log_max - log_min) * ratio_draw)
    crop_w = torch.sqrt(area * ratio).round().long()
    crop_h = torch.sqrt(area / ratio).round().long()
    fits = ((crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)).nonzero()
    if len(fits):
        first = fits[0, 0]
        crop_h, crop_w = int(crop_h[first]), int(crop_w[first])
        top = int(keyed_randint(seed, epoch, index, Stream.RESIZED_CROP_TOP, height - crop_h + 1))
        left = int(keyed_randint(seed, epoch, index, Stream.RESIZED_CROP_LEFT, width - crop_w + 1))
        return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < RESIZED_CROP_RATIO[0]:
        crop_w, crop_h = width, round(width / RESIZED_CROP_RATIO[0])
    elif in_ratio > RESIZED_CROP_RATIO[1]:
        crop_h, crop_w = height, round(height * RESIZED_CROP_RATIO[1])
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w
