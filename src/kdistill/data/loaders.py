"""The loaders: batches of normalised images on the training device, from any data set."""

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from kdistill.config import DataConfig, TrainTransform
from kdistill.data.augment import Stream, crop_flip, crop_flip_params, keyed_bits
from kdistill.data.deit import DeitFileDataset, deit_transform
from kdistill.data.image_check import ImageCheck, check_images, checked_source, image_paths
from kdistill.data.sources import DATASETS, ImageArrays, ImageFiles, Split, resolve_root
from kdistill.data.streaming import EVAL_CROP_PCT, FileDataset, Resizing, collate_or_error
from kdistill.data.two_view import TwoViewFileDataset, mean_fill, strong_view
from kdistill.errors import KdistillError

RESIZE_CHUNK = 1024  # images resized at once: bounds the float copy torchvision makes


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    in_chans: int
    image_size: int  # side after any resize
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None
    train_size: int  # samples in the train split (after a validation split is carved out)
    # Image folders: their files' state (`Source.tree_state_of`), computed when first asked for.
    tree_state_of: Callable[[], str] | None = field(default=None, repr=False)
    # The evaluation's center crop: the image resized to image_size / eval_crop_pct, then cropped
    # to image_size (1.0: in-memory sets, resized whole to image_size).
    eval_crop_pct: float = 1.0

    @property
    def tree_state(self) -> str | None:
        """An image folder's digest of its files' paths, sizes and modification times; None for in-memory sets."""
        return self.tree_state_of() if self.tree_state_of is not None else None


class BatchOrder:
    """The sample indices of each batch of an epoch, for one rank of `world_size`.

    Train: a permutation seeded by (seed, epoch), padded by wrapping around to a multiple of
    world_size; rank r takes every world_size-th entry from r (as DistributedSampler does),
    so every rank has as many batches; the last partial batch is dropped.
    Eval: the split in order, rank r takes every world_size-th sample from r without padding,
    so the ranks together see each sample once; the last partial batch is kept.

    Train with `repeats` > 1 (repeated augmentation, timm's RepeatAugSampler): each entry of the
    permutation is repeated `repeats` times in a row, rank r takes every world_size-th entry from
    r (so the repeats of a sample go to different ranks), and each rank keeps its first
    floor(size // 256 * 256 / world_size) entries (ceil(size / world_size) below 256 samples).
    The entries are view ids, `index + repeat * size`, so each repeat can have its own view.
    """

    SELECTED_ROUND = 256  # timm's selected_round

    def __init__(self, size: int, batch_size: int, seed: int, rank: int, world_size: int, train: bool,
                 repeats: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.train, self.repeats = rank, world_size, train, repeats

    def per_rank(self) -> int:
        """Train samples (views) per rank and epoch."""
        if self.repeats == 1:
            return math.ceil(self.size / self.world_size)
        if self.size >= self.SELECTED_ROUND:
            selected = self.size // self.SELECTED_ROUND * self.SELECTED_ROUND // self.world_size
        else:
            selected = math.ceil(self.size / self.world_size)
        return min(selected, math.ceil(self.size * self.repeats / self.world_size))

    def __len__(self) -> int:
        if self.train:
            return self.per_rank() // self.batch_size
        return math.ceil(len(range(self.rank, self.size, self.world_size)) / self.batch_size)

    def batches(self, epoch: int) -> list[Tensor]:
        """The CPU int64 index (view id) tensors of this rank's batches in `epoch`."""
        if not self.train:
            return list(torch.arange(self.rank, self.size, self.world_size).split(self.batch_size))
        order = self._permutation(epoch)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats) + torch.arange(self.repeats).repeat(self.size) * self.size
        padded_size = math.ceil(len(order) / self.world_size) * self.world_size
        order = order.repeat(math.ceil(padded_size / len(order)))[:padded_size]
        mine = order[self.rank :: self.world_size][: self.per_rank()]
        return list(mine.split(self.batch_size))[: len(self)]

    def covering_batches(self, epoch: int) -> list[Tensor]:
        """Every sample of the split once, in `epoch`'s shuffle order, in batches of batch_size
        (the last one partial): in one process without repeats, the training batches followed by
        the samples they drop. For passes that must see every sample's view of an epoch (the
        teacher cache)."""
        return list(self._permutation(epoch).split(self.batch_size))

    def _permutation(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(int(keyed_bits(self.seed, epoch, 0, Stream.SHUFFLE)))
        return torch.randperm(self.size, generator=generator)


class Normalizer:
    """uint8 images -> the float32 input of the models: (x / 255 - mean) / std per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        # The 1/255 is folded into mean and std: one subtract and one divide per batch.
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def __call__(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) / self.std


class Loader:
    """Batches of one split: dicts with "image" (normalised float32 [B, C, H, W]), "label"
    and "index" (int64 [B], the sample's index within its split), all on `device`; a train
    loader built with `strong_view` also gives "image_strong", the strong view of the same
    images (`kdistill.data.two_view`), normalised alike.

    `len()` is the number of batches per epoch for this rank; `labels` holds all labels of
    the split (CPU); `set_epoch` picks the shuffle order and augmentation of the next pass and
    may skip its first batches (a resume within an epoch): the batches that follow hold the
    same samples and views as in a full pass, since order and augmentation are keyed.
    """

    def __init__(self, order: BatchOrder, labels: Tensor, normalize: Callable[[Tensor], Tensor], device: torch.device):
        self.order, self.labels, self.normalize, self.device = order, labels.cpu(), normalize, device
        self.dataset_size = len(labels)
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def _epoch_batches(self) -> list[Tensor]:
        """The index tensors of this pass's batches, after the skipped ones."""
        return self.order.batches(self.epoch)[self.skip_batches :]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.batches_of(self._epoch_batches())

    def batches_of(self, index_batches: list[Tensor]) -> Iterator[dict[str, Tensor]]:
        """The batches of the given sample indices (CPU int64 tensors), augmented as in the current epoch."""
        for images, labels, index, strong in self._uint8_batches(index_batches):
            batch = {"image": self.normalize(images), "label": labels, "index": index}
            if strong is not None:
                batch["image_strong"] = self.normalize(strong)
            yield batch

    def _uint8_batches(self, index_batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        """(images, labels, index, strong view or None) per batch, uint8 images on the device."""
        raise NotImplementedError


class ArrayLoader(Loader):
    """A split held in memory (on the device, or on the CPU and copied per batch), augmented
    a whole batch at a time on the device; `strong_fill` (Cutout's colour) turns the strong
    view on."""

    def __init__(
        self, arrays: ImageArrays, order: BatchOrder, normalize: Normalizer, device: torch.device, seed: int,
        augment: bool, hflip: bool, strong_fill: tuple[int, ...] | None = None,
    ):
        super().__init__(order, arrays.labels, normalize, device)
        self.images = arrays.images
        self._stored_labels = arrays.labels.to(arrays.images.device)  # gathered where the images are
        self.seed, self.augment, self.hflip, self.strong_fill = seed, augment, hflip, strong_fill

    def _uint8_batches(self, index_batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        for cpu_index in index_batches:
            stored = cpu_index.to(self.images.device)
            # index_select: a plain row copy, far faster than advanced indexing on a CPU
            images = self.images.index_select(0, stored).to(self.device, non_blocking=True)
            labels = self._stored_labels.index_select(0, stored).to(self.device, non_blocking=True)
            index = cpu_index.to(self.device)
            strong = None
            if self.strong_fill is not None:  # from the stored images: its crop is its own
                strong = strong_view(images, self.seed, self.epoch, cpu_index, self.strong_fill, hflip=self.hflip)
            if self.augment:
                images = crop_flip(images, *crop_flip_params(self.seed, self.epoch, index, hflip=self.hflip))
            yield images, labels, index, strong


class StreamLoader(Loader):
    """A split of image files, decoded and augmented per sample by DataLoader workers."""

    def __init__(
        self, dataset: Dataset, order: BatchOrder, normalize: Callable[[Tensor], Tensor], device: torch.device,
        num_workers: int,
    ):
        super().__init__(order, dataset.files.labels, normalize, device)
        self.dataset, self.num_workers = dataset, num_workers

    def _uint8_batches(self, index_batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor | None]]:
        # The epoch rides along with each index, so the workers need no state of their own.
        # Its own generator: the DataLoader draws its workers' base seed from it, not from the
        # global RNG a method may use (augmentation is keyed, so that seed changes nothing).
        keys = [[(i, self.epoch) for i in batch.tolist()] for batch in index_batches]
        loader = DataLoader(
            self.dataset, batch_sampler=keys, num_workers=self.num_workers, collate_fn=collate_or_error,
            pin_memory=self.device.type == "cuda", generator=torch.Generator(),
        )
        for batch in loader:
            if isinstance(batch, KdistillError):  # an image that cannot be decoded
                raise batch
            images, labels, index, *strong = batch  # a TwoViewFileDataset adds the strong view
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
                index.to(self.device, non_blocking=True),
                strong[0].to(self.device, non_blocking=True) if strong else None,
            )


@dataclass
class Loaders:
    train: Loader
    test: Loader
    val: Loader | None
    info: DatasetInfo


def list_datasets() -> list[str]:
    return DATASETS.names()


def split_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """(train, val): per class, the round(fraction * class size) samples with the smallest
    keyed values (from the seed alone) form the validation split; both keep their order."""
    if fraction == 0:
        return split, None
    keys = keyed_bits(seed, 0, torch.arange(len(split.labels)), Stream.VAL_SPLIT)
    in_val = torch.zeros(len(split.labels), dtype=torch.bool)
    for label in split.labels.unique():
        members = (split.labels == label).nonzero()[:, 0]
        in_val[members[keys[members].argsort()[: round(fraction * len(members))]]] = True
    return split.subset(in_val.logical_not().nonzero()[:, 0]), split.subset(in_val.nonzero()[:, 0])


def _resized(images: Tensor, size: int, resizing: Resizing) -> Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return torch.cat([F.resize(part, [size, size], resizing.mode) for part in images.split(RESIZE_CHUNK)])


def _identity(images: Tensor) -> Tensor:
    return images


def _check_options(cfg: DataConfig, rank: int, world_size: int, with_strong_view: bool) -> None:
    if not 0 <= cfg.val_fraction < 1:
        raise KdistillError(f"data.val_fraction={cfg.val_fraction} is outside [0, 1); set e.g. 0.1 (0: none)")
    for key, minimum in {"batch_size": 1, "eval_batch_size": 1, "image_size": 1, "num_workers": 0}.items():
        value = getattr(cfg, key)
        if value is not None and value < minimum:
            raise KdistillError(f"data.{key}={value} is below {minimum}; set it to at least {minimum}")
    if not 0 <= rank < world_size:
        raise KdistillError(f"rank {rank} is not in [0, world_size={world_size})")
    if cfg.repeated_augment < 1 or (cfg.repeated_augment > 1 and cfg.train_transform is not TrainTransform.deit):
        raise KdistillError(f"data.repeated_augment={cfg.repeated_augment}: use 1 (off), or a count of at least 2 "
                            f"with data.train_transform=deit")
    if cfg.train_transform is TrainTransform.deit and with_strong_view:
        raise KdistillError("data.train_transform=deit has no strong view: use data.train_transform=standard "
                            "with a two-view method (crld)")
    if cfg.std is not None and min(cfg.std) <= 0:
        raise KdistillError(f"data.std={list(cfg.std)} has a value that is not positive: "
                            f"use e.g. [0.229, 0.224, 0.225]")


def image_check_cache(cfg: DataConfig) -> Path:
    """The file that keeps the image check's result: in data.cache_dir, or else in a
    .kdistill-cache folder beside the data; named by the data's folder, so one cache_dir serves many."""
    root = resolve_root(cfg.root, cfg.name).resolve()
    folder = Path(cfg.cache_dir).expanduser() if cfg.cache_dir is not None else root / ".kdistill-cache"
    return folder / f"image-check-{cfg.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}.json"


def check_image_folder(cfg: DataConfig) -> ImageCheck:
    """The image check of data set cfg.name at cfg.root, as a run's start makes it (`kdistill data check`)."""
    source = DATASETS.get(cfg.name)(cfg.root, cfg.download)
    paths = image_paths(source)
    if not paths:
        raise KdistillError(f"data set '{cfg.name}' is read into memory, it has no image files to check: "
                            f"give an image folder (data.name=imagefolder or tiny-imagenet)")
    return check_images(paths, image_check_cache(cfg))


def build_loaders(
    cfg: DataConfig, device: torch.device, seed: int, rank: int = 0, world_size: int = 1,
    train_as_eval: bool = False, with_strong_view: bool = False,
) -> Loaders:
    """The train, test and (when cfg.val_fraction > 0) validation loaders of cfg.name.

    `with_strong_view`: train batches also carry "image_strong" (methods with `needs_strong_view`).
    `train_as_eval` reads the train split like a test split (in order, every sample once, no
    augmentation, no strong view): for feature banks and linear probes."""
    _check_options(cfg, rank, world_size, with_strong_view)
    device = torch.device(device)
    source = DATASETS.get(cfg.name)(cfg.root, cfg.download)
    source = checked_source(source, cfg.name, cfg.bad_images, image_check_cache(cfg), rank, cfg.check_images)
    train, val = split_validation(source.train, cfg.val_fraction, seed)
    if val is not None and len(val.labels) == 0:
        raise KdistillError(f"data.val_fraction={cfg.val_fraction} leaves no validation sample; raise it")
    image_size = cfg.image_size or source.image_size
    store = device if cfg.device_resident else torch.device("cpu")
    mean = tuple(cfg.mean) if cfg.mean is not None else source.mean
    std = tuple(cfg.std) if cfg.std is not None else source.std
    if source.in_chans == 1 and len(mean) == len(std) == 3:
        # An RGB model's normalisation on a grayscale set: the channels' average, as the model's
        # first conv (adapted by summing its RGB weights) sees one channel for all three.
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    if len(mean) != source.in_chans or len(std) != source.in_chans:
        raise KdistillError(f"data.mean / data.std need {source.in_chans} values for '{cfg.name}' "
                            f"(got {len(mean)} and {len(std)})")
    normalize = Normalizer(mean, std, device)
    resizing = Resizing(cfg.eval_crop_pct or EVAL_CROP_PCT, cfg.interpolation or "bilinear")

    def make_loader(split: Split, is_train: bool) -> Loader:
        is_train = is_train and not train_as_eval
        batch_size = cfg.batch_size if is_train else cfg.eval_batch_size
        deit = is_train and cfg.augment and cfg.train_transform is TrainTransform.deit
        order = BatchOrder(len(split.labels), batch_size, seed, rank, world_size, train=is_train,
                           repeats=cfg.repeated_augment if deit else 1)
        augment = is_train and cfg.augment
        strong_fill = mean_fill(source.mean) if is_train and with_strong_view else None
        if deit:
            if not isinstance(split, ImageFiles):
                raise KdistillError(f"data.train_transform=deit works on image folders (imagefolder, tiny-imagenet), "
                                    f"not on the in-memory '{cfg.name}': use data.train_transform=standard")
            dataset = DeitFileDataset(split, deit_transform(cfg, image_size, mean, std), seed)
            return StreamLoader(dataset, order, _identity, device, cfg.num_workers)
        if isinstance(split, ImageFiles):
            if strong_fill is None:
                dataset = FileDataset(split, image_size, seed, augment, source.resized_crop, source.hflip, resizing)
            else:
                dataset = TwoViewFileDataset(split, image_size, seed, augment, source.resized_crop, source.hflip,
                                             strong_fill, resizing)
            return StreamLoader(dataset, order, normalize, device, cfg.num_workers)
        arrays = ImageArrays(_resized(split.images, image_size, resizing).to(store), split.labels)
        return ArrayLoader(arrays, order, normalize, device, seed, augment, source.hflip, strong_fill)

    train_loader = make_loader(train, is_train=True)
    if len(train_loader) == 0:
        per_process = math.ceil(len(train.labels) / world_size)
        raise KdistillError(
            f"data.batch_size={cfg.batch_size} is larger than the {per_process} training samples per process "
            f"of '{cfg.name}'; lower data.batch_size"
        )
    info = DatasetInfo(
        name=cfg.name,
        num_classes=source.num_classes,
        in_chans=source.in_chans,
        image_size=image_size,
        mean=mean,
        std=std,
        class_names=source.class_names,
        train_size=len(train.labels),
        tree_state_of=source.tree_state_of,
        eval_crop_pct=resizing.eval_crop_pct if isinstance(source.test, ImageFiles) else 1.0,
    )
    return Loaders(
        train=train_loader,
        test=make_loader(source.test, is_train=False),
        val=make_loader(val, is_train=False) if val is not None else None,
        info=info,
    )
