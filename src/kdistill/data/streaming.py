"""Per-sample decoding and augmentation for the streamed (folder) data sets."""

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate
from torchvision.transforms.v2 import functional as F

from kdistill.data.augment import crop_flip, crop_flip_params, keyed_flip, resized_crop_params
from kdistill.data.image_check import decode_error_reason
from kdistill.data.sources import ImageFiles
from kdistill.errors import KdistillError

EVAL_CROP_PCT = 224 / 256  # ImageNet evaluation: resize to 256, center-crop 224


@dataclass(frozen=True)
class Resizing:
    """How streamed images are resized: the evaluation's center-crop fraction and the interpolation."""

    eval_crop_pct: float = EVAL_CROP_PCT
    interpolation: str = "bilinear"  # a torchvision InterpolationMode value: bilinear, bicubic, ...

    def eval_resize(self, size: int) -> int:
        """The shorter side before the evaluation's center crop of `size` (timm's rounding down)."""
        return math.floor(size / self.eval_crop_pct + 1e-6)

    @property
    def mode(self) -> F.InterpolationMode:
        return F.InterpolationMode(self.interpolation)


def read_rgb(path: str, checked: bool) -> Tensor:
    """A uint8 [3, H, W] image; grayscale and palette files are converted to RGB. `checked`: the
    image check at start decoded the file (else data.check_images=false skipped it).

    PIL rather than torchvision.io, whose decoders are deprecated since torchvision 0.29.
    """
    try:
        with Image.open(path) as image:
            return F.pil_to_tensor(image.convert("RGB"))
    except Exception as error:  # PIL raises many types for a bad file; all mean "undecodable"
        problem = f"image {path} cannot be decoded ({decode_error_reason(error, path)})"
        if checked:
            fix = ("although the check at start could: it changed since; restore or delete it, then run again "
                   "(a training run continues with --resume)")
        else:
            fix = ("and data.check_images=false skipped the check at start: restore or delete it (`kdistill data check "
                   "<data root>` finds every such file), or set data.check_images=true data.bad_images=skip to leave "
                   "them out; then run again (a training run continues with --resume)")
        raise KdistillError(f"{problem} {fix}") from None


def collate_or_error(samples: list) -> object:
    """The batch of `samples`, or the first KdistillError among them: a worker hands a failed
    sample's error over as a value, since the DataLoader would re-raise it wrapped in its own
    traceback."""
    error = next((sample for sample in samples if isinstance(sample, KdistillError)), None)
    return error if error is not None else default_collate(samples)


class FileDataset(Dataset):
    """Reads sample `index` for epoch `epoch`, keyed by the pair, as a uint8 [3, S, S] image.

    The augmentation parameters come from the keyed generator, so which worker or batch
    handles a sample does not change its view.

    resized_crop: train with ImageNet's random-resized crop and test with resize + center crop;
    otherwise (Tiny-ImageNet) resize to S when needed and train with the pad-4 crop.
    """

    def __init__(
        self, files: ImageFiles, image_size: int, seed: int, augment: bool, resized_crop: bool, hflip: bool,
        resizing: Resizing = Resizing(),
    ):
        self.files, self.image_size, self.seed = files, image_size, seed
        self.augment, self.resized_crop, self.hflip, self.resizing = augment, resized_crop, hflip, resizing

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple | KdistillError:
        """The sample, or the error of an image that cannot be decoded (see `collate_or_error`)."""
        index, epoch = key
        try:
            image = read_rgb(self.files.paths[index], self.files.checked)
        except KdistillError as error:
            return error
        return self.sample(image, index, epoch)

    def sample(self, image: Tensor, index: int, epoch: int) -> tuple[Tensor, Tensor, int]:
        """(view, label, index) of sample `index` in `epoch`, from its decoded image."""
        return self.view(image, index, epoch), self.files.labels[index], index

    def view(self, image: Tensor, index: int, epoch: int) -> Tensor:
        """This data set's view of a decoded image of sample `index` in `epoch`."""
        transform = self._resized_crop_view if self.resized_crop else self._pad_crop_view
        return transform(image, index, epoch)

    def _resized_crop_view(self, image: Tensor, index: int, epoch: int) -> Tensor:
        size = self.image_size
        if not self.augment:
            image = F.resize(image, [self.resizing.eval_resize(size)], self.resizing.mode)  # shorter side
            return F.center_crop(image, [size, size])
        top, left, height, width = resized_crop_params(self.seed, epoch, index, *image.shape[-2:])
        image = F.resized_crop(image, top, left, height, width, [size, size], self.resizing.mode)
        return F.horizontal_flip(image) if self.hflip and keyed_flip(self.seed, epoch, index) else image

    def _pad_crop_view(self, image: Tensor, index: int, epoch: int) -> Tensor:
        if image.shape[-2:] != (self.image_size, self.image_size):
            image = F.resize(image, [self.image_size, self.image_size], self.resizing.mode)
        if not self.augment:
            return image
        params = crop_flip_params(self.seed, epoch, torch.tensor([index]), hflip=self.hflip)
        return crop_flip(image[None], *params)[0]  # the in-memory sets' batched crop, on a batch of one
