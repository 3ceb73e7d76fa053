"""The strong view of two-view methods (CRLD): an independent crop + flip, then RandAugment
(FixMatch style: 2 operations, each at a random magnitude) and Cutout.

Every random choice (operation, magnitude, sign, cutout box) is drawn per image from the keyed
generator of `kdistill.data.augment`, so an image's strong view is a pure function of (seed,
epoch, sample index), whatever the batch size, order, process or device. The operations run a
whole group of images at once: for each operation slot, the images that drew the same
operation are transformed together on their device, each with its own magnitude.

The operation pool and magnitude ranges are FixMatch's (Sohn et al. 2020, Table 12). Both
operations are always applied, each magnitude uniform over its range, as in the mdistiller-family
code CRLD's reference builds on (kekmodel's FixMatch port instead applies each with probability
1/2 at a discrete magnitude). The pool: AutoContrast, Brightness / Color / Contrast / Sharpness with
factor in [0.05, 0.95],
Equalize, Identity, Posterize to [4, 8) bits, Rotate by +-[0, 30] degrees, ShearX / ShearY by
+-[0, 0.3], Solarize above a threshold in [0, 256), TranslateX / TranslateY by +-[0, 0.3] of
the side. ShearX / ShearY follow PIL's affine convention, as the reference's PIL code draws them
(`Image.transform(AFFINE, (1, v, 0, 0, 1, 0))`: about the top-left origin, nearest neighbour,
zero fill); Rotate and Translate work as torchvision's tensor `affine` / `rotate` (about the
centre, nearest neighbour, zero fill). Cutout then draws the reference's box (its CutoutAbs): side
v = width * U[0, 0.5), a point uniform in the image, the box's top-left corner at
int(max(0, point - v / 2)) (so a box at the top or left border is shifted inward, keeping its
side), its bottom-right at min(side, corner + v), edges inclusive as PIL's `rectangle`, filled
with the data set's mean colour (zero after normalisation).
"""

from enum import IntEnum

import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from kdistill.data.augment import (
    crop_flip,
    crop_flip_params,
    keyed_bits,
    keyed_randint,
    keyed_uniform,
)
from kdistill.data.sources import ImageFiles
from kdistill.data.streaming import FileDataset, Resizing

RAND_AUGMENT_OPS_PER_IMAGE = 2
MAX_OPS_PER_IMAGE = 8  # stream ids reserved per slot
FACTOR_RANGE = (0.05, 0.95)  # brightness, color, contrast, sharpness
POSTERIZE_BITS = (4, 8)  # [low, high) bits kept
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3  # the shear coefficient, tan of the shear angle
MAX_TRANSLATE = 0.3  # of the image side
SOLARIZE_LEVELS = 256
CUTOUT_MAX_FRACTION = 0.5


class StrongStream(IntEnum):
    """Stream ids of the strong view's random quantities, clear of `augment.Stream`'s."""

    CROP_SEED = 128  # derives the seed of the strong view's crop + flip
    OP = 136  # + slot
    MAGNITUDE = 144  # + slot
    SIGN = 152  # + slot
    CUTOUT_SIZE = 160
    CUTOUT_CENTER_Y = 161
    CUTOUT_CENTER_X = 162


def strong_crop_seed(seed: int) -> int:
    """The seed under which the strong view draws its crop + flip with the weak view's own
    functions: a separate key, so the two crops are independent."""
    return int(keyed_bits(seed, 0, 0, StrongStream.CROP_SEED))


def mean_fill(mean: tuple[float, ...]) -> tuple[int, ...]:
    """A data set's mean colour as uint8 values, per channel (Cutout's fill)."""
    return tuple(round(255 * value) for value in mean)


# ---- the operations: (uint8 images [N, C, H, W], magnitude [N] in [0, 1), sign [N] of +-1) -> uint8

def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _factor(magnitude: Tensor) -> Tensor:
    low, high = FACTOR_RANGE
    return _per_image(low + (high - low) * magnitude)


def _blend(images: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """torchvision's blend `factor * image + (1 - factor) * degenerate`, a factor per image."""
    return (images * factor + degenerate * (1 - factor)).clamp_(0, 255).to(torch.uint8)


def identity(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    return images


def auto_contrast(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    return F.autocontrast(images)


def equalize(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    return F.equalize(images)


def brightness(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    return (images * _factor(magnitude)).clamp_(0, 255).to(torch.uint8)


def color(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    if images.shape[1] == 1:  # no colour to change (as torchvision's adjust_saturation)
        return images
    return _blend(images, F.rgb_to_grayscale(images).float(), _factor(magnitude))


def contrast(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    gray = F.rgb_to_grayscale(images) if images.shape[1] == 3 else images
    return _blend(images, gray.float().mean(dim=(1, 2, 3), keepdim=True), _factor(magnitude))


def sharpness(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    blurred = F.adjust_sharpness(images, 0.0).float()  # the smoothed image, borders kept
    base = images.float()
    # torchvision's form x + (1 - f) (blurred - x): exact where the two agree (the border).
    return base.add_((1 - _factor(magnitude)) * (blurred - base)).clamp_(0, 255).to(torch.uint8)


def posterize(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    low, high = POSTERIZE_BITS
    bits = low + (magnitude * (high - low)).long()
    keep = (0xFF << (8 - bits)) & 0xFF  # the top `bits` bits, as torchvision's posterize
    return images & _per_image(keep).to(torch.uint8)


def solarize(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    threshold = _per_image(magnitude * SOLARIZE_LEVELS)
    return torch.where(images >= threshold, 255 - images, images)


def _affine(images: Tensor, angle: Tensor, translate: Tensor) -> Tensor:
    """torchvision's tensor `affine` (about the centre, nearest, zero fill) with parameters per
    image: angle [N] in degrees, translate [N, 2] in pixels."""
    batch, _, height, width = images.shape
    rot = angle.double().deg2rad()
    # Inverse of the rotation, then of the translation: torchvision's _get_inverse_affine_matrix.
    a, b, c, d = torch.cos(rot), -torch.sin(rot), torch.sin(rot), torch.cos(rot)
    tx, ty = (-translate.double()).unbind(1)
    theta = torch.stack([
        torch.stack([d, -b, d * tx - b * ty], dim=1),
        torch.stack([-c, a, -c * tx + a * ty], dim=1),
    ], dim=1).float()  # [N, 2, 3]
    # Output pixel centres relative to the image centre, mapped and normalised to [-1, 1].
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=images.device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=images.device)
    base = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width),
                        torch.ones(height, width, device=images.device)], dim=-1)
    scale = torch.tensor([0.5 * width, 0.5 * height], device=images.device)
    grid = base.view(1, -1, 3).expand(batch, -1, -1).bmm(theta.transpose(1, 2) / scale)
    sampled = nnf.grid_sample(images.float(), grid.view(batch, height, width, 2), mode="nearest",
                              padding_mode="zeros", align_corners=False)
    return sampled.round_().to(torch.uint8)


def rotate(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    # torchvision's rotate turns counter-clockwise for a positive angle: affine with -angle.
    angle = -sign * MAX_ROTATE_DEGREES * magnitude
    return _affine(images, angle, torch.zeros(len(angle), 2, device=images.device))


def pil_affine(images: Tensor, coefficients: Tensor) -> Tensor:
    """PIL's `Image.transform(size, AFFINE, (a, b, c, d, e, f))` (nearest, zero fill) with the six
    coefficients per image ([N, 6]): output pixel (x, y) takes the input pixel at
    (floor(a (x + 1/2) + b (y + 1/2) + c), floor(d (x + 1/2) + e (y + 1/2) + f)), zero outside."""
    batch, channels, height, width = images.shape
    a, b, c, d, e, f = (value.view(-1, 1, 1) for value in coefficients.double().unbind(1))
    xs = torch.arange(width, dtype=torch.float64, device=images.device).view(1, 1, -1) + 0.5
    ys = torch.arange(height, dtype=torch.float64, device=images.device).view(1, -1, 1) + 0.5
    source_x = (a * xs + b * ys + c).floor().long()  # [N, H, W]
    source_y = (d * xs + e * ys + f).floor().long()
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    flat = (source_y.clamp(0, height - 1) * width + source_x.clamp(0, width - 1)).view(batch, 1, -1)
    sampled = images.flatten(2).gather(2, flat.expand(-1, channels, -1)).view_as(images)
    return torch.where(inside[:, None], sampled, torch.zeros((), dtype=images.dtype, device=images.device))


def _shear_coefficients(magnitude: Tensor, sign: Tensor, position: int) -> Tensor:
    """PIL's identity affine with the shear `sign * MAX_SHEAR * magnitude` at `position` (1: x, 3: y)."""
    coefficients = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=magnitude.device)
    coefficients = coefficients.repeat(len(magnitude), 1)
    coefficients[:, position] = sign.double() * MAX_SHEAR * magnitude.double()
    return coefficients


def shear_x(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    return pil_affine(images, _shear_coefficients(magnitude, sign, 1))


def shear_y(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    return pil_affine(images, _shear_coefficients(magnitude, sign, 3))


def translate_x(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    shift = torch.stack([sign * MAX_TRANSLATE * magnitude * images.shape[-1], torch.zeros_like(magnitude)], dim=1)
    return _affine(images, torch.zeros_like(magnitude), shift)


def translate_y(images: Tensor, magnitude: Tensor, sign: Tensor) -> Tensor:
    shift = torch.stack([torch.zeros_like(magnitude), sign * MAX_TRANSLATE * magnitude * images.shape[-2]], dim=1)
    return _affine(images, torch.zeros_like(magnitude), shift)


RAND_AUGMENT_OPS = (
    auto_contrast, brightness, color, contrast, equalize, identity, posterize, rotate, sharpness,
    shear_x, shear_y, solarize, translate_x, translate_y,
)


# ---- the pipeline ------------------------------------------------------------------------

def rand_augment_params(
    seed: int, epoch: int, index: Tensor, num_ops: int = RAND_AUGMENT_OPS_PER_IMAGE
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image and operation slot [B, num_ops]: the operation (index into `RAND_AUGMENT_OPS`),
    its magnitude in [0, 1) and its sign (+-1.0), on `index`'s device."""
    if not 1 <= num_ops <= MAX_OPS_PER_IMAGE:
        raise ValueError(f"num_ops={num_ops} is outside [1, {MAX_OPS_PER_IMAGE}]")
    index = index[:, None]
    slots = torch.arange(num_ops, device=index.device)
    ops = keyed_randint(seed, epoch, index, StrongStream.OP + slots, len(RAND_AUGMENT_OPS))
    magnitude = keyed_uniform(seed, epoch, index, StrongStream.MAGNITUDE + slots)
    sign = torch.where(keyed_uniform(seed, epoch, index, StrongStream.SIGN + slots) < 0.5, -1.0, 1.0)
    return ops, magnitude, sign


def rand_augment(
    images: Tensor, seed: int, epoch: int, index: Tensor, num_ops: int = RAND_AUGMENT_OPS_PER_IMAGE
) -> Tensor:
    """RandAugment on uint8 images [B, C, H, W] (C = 1 or 3): `num_ops` operations per image in
    turn, each with its own magnitude; images that drew the same operation go through together.

    `index` [B] holds the sample indices; on the CPU it costs the device no synchronisation
    (the grouping is decided there).
    """
    ops, magnitude, sign = rand_augment_params(seed, epoch, index.cpu(), num_ops)
    magnitude, sign = magnitude.to(images.device), sign.to(images.device)
    images = images.clone()
    for slot in range(num_ops):
        for op_id, op in enumerate(RAND_AUGMENT_OPS):
            if op is identity:
                continue
            members = (ops[:, slot] == op_id).nonzero()[:, 0]
            if len(members) == 0:
                continue
            members = members.to(images.device)
            images[members] = op(images[members], magnitude[members, slot], sign[members, slot])
    return images


def cutout_boxes(side: Tensor, point_x: Tensor, point_y: Tensor, height: int, width: int) -> Tensor:
    """The reference's Cutout boxes [N, 4] (left, top, right, bottom; inclusive pixel bounds) from
    the box side and the point drawn per image (float tensors [N]); a side of 0 gives an empty box."""
    left = (point_x - side / 2).clamp(min=0).floor()
    top = (point_y - side / 2).clamp(min=0).floor()
    right = torch.minimum(left + side, torch.tensor(float(width))).floor()  # PIL truncates, then includes
    bottom = torch.minimum(top + side, torch.tensor(float(height))).floor()
    empty = side <= 0
    right, bottom = torch.where(empty, left - 1, right), torch.where(empty, top - 1, bottom)
    return torch.stack([left, top, right, bottom], dim=1).long()


def fill_boxes(images: Tensor, boxes: Tensor, fill: tuple[int, ...]) -> Tensor:
    """`images` [B, C, H, W] with each image's inclusive box (`cutout_boxes`) filled with `fill`."""
    height, width = images.shape[-2:]
    left, top, right, bottom = boxes.to(images.device).unbind(1)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    in_rows = (rows >= top[:, None]) & (rows <= bottom[:, None])  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols <= right[:, None])  # [B, W]
    inside = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [B, 1, H, W]
    colour = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return torch.where(inside, colour, images)


def cutout(images: Tensor, seed: int, epoch: int, index: Tensor, fill: tuple[int, ...]) -> Tensor:
    """The reference's Cutout on uint8 images [B, C, H, W] (`index` [B]): side = width * U[0, 0.5),
    a point uniform over the image, the box of `cutout_boxes`, filled with `fill`."""
    height, width = images.shape[-2:]
    index = index.cpu()
    side = keyed_uniform(seed, epoch, index, StrongStream.CUTOUT_SIZE).double() * CUTOUT_MAX_FRACTION * width
    point_y = keyed_uniform(seed, epoch, index, StrongStream.CUTOUT_CENTER_Y).double() * height
    point_x = keyed_uniform(seed, epoch, index, StrongStream.CUTOUT_CENTER_X).double() * width
    return fill_boxes(images, cutout_boxes(side, point_x, point_y, height, width), fill)


def strong_augment(
    images: Tensor, seed: int, epoch: int, index: Tensor, fill: tuple[int, ...],
    num_ops: int = RAND_AUGMENT_OPS_PER_IMAGE,
) -> Tensor:
    """What follows the crop in the strong view: RandAugment, then Cutout."""
    return cutout(rand_augment(images, seed, epoch, index, num_ops), seed, epoch, index, fill)


def strong_view(
    images: Tensor, seed: int, epoch: int, index: Tensor, fill: tuple[int, ...], hflip: bool = True,
    num_ops: int = RAND_AUGMENT_OPS_PER_IMAGE,
) -> Tensor:
    """The strong view of stored uint8 images [B, C, H, W] (the in-memory data sets): an
    independent pad-4 crop + flip, RandAugment and Cutout; same dtype, range and shape."""
    crop_index = index.to(images.device)
    images = crop_flip(images, *crop_flip_params(strong_crop_seed(seed), epoch, crop_index, hflip=hflip))
    return strong_augment(images, seed, epoch, index, fill, num_ops)


class TwoViewFileDataset(FileDataset):
    """A streamed data set that decodes each sample once and returns both views:
    (weak view, label, index, strong view), all uint8 [3, S, S] images.

    The weak view is `FileDataset`'s; the strong view starts from an independent crop + flip
    of the same kind (random-resized for ImageNet-style sets, pad-4 otherwise), drawn by the
    same code under `strong_crop_seed(seed)`, then `strong_augment`.
    """

    def __init__(self, files: ImageFiles, image_size: int, seed: int, augment: bool, resized_crop: bool,
                 hflip: bool, fill: tuple[int, ...], resizing: Resizing = Resizing()):
        super().__init__(files, image_size, seed, augment, resized_crop, hflip, resizing)
        self.strong_crop = FileDataset(files, image_size, strong_crop_seed(seed), True, resized_crop, hflip, resizing)
        self.fill = fill

    def sample(self, image: Tensor, index: int, epoch: int) -> tuple[Tensor, Tensor, int, Tensor]:
        weak = self.view(image, index, epoch)
        cropped = self.strong_crop.view(image, index, epoch)
        strong = strong_augment(cropped[None], self.seed, epoch, torch.tensor([index]), self.fill)[0]
        return weak, self.files.labels[index], index, strong

