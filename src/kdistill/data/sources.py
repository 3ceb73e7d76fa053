"""Readers of the supported data sets: each turns the files on disk into a `Source`.

Small data sets are read whole into uint8 arrays; folder data sets become lists of image
files that the loader decodes on the fly. `download=True` hands the download to
torchvision's own code and only when the files are missing.
"""

import functools
import gzip
import io
import lzma
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets as tv_datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension
from torchvision.datasets.utils import download_and_extract_archive

from kdistill.errors import KdistillError, first_line, missing_path_hint
from kdistill.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist
EMBEDDED_FILE = "fashion_mnist_subset.npz.xz"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
DOWNLOAD_HINT = "set data.root=..., or pass data.download=true where a network exists"


@dataclass
class ImageArrays:
    """A split held in memory: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: Tensor
    labels: Tensor

    def subset(self, indices: Tensor) -> "ImageArrays":
        return ImageArrays(self.images[indices], self.labels[indices])


@dataclass
class ImageFiles:
    """A split streamed from disk: one image file per sample, int64 labels [N]."""

    paths: list[str]
    labels: Tensor
    checked: bool = False  # every file was decoded by the image check before the run

    def subset(self, indices: Tensor) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in indices.tolist()], self.labels[indices], self.checked)


Split = ImageArrays | ImageFiles


@dataclass
class Source:
    """What a reader found: both splits and the facts the loaders and models need."""

    train: Split
    test: Split
    num_classes: int
    in_chans: int
    image_size: int  # the side the images have (streamed sets: the side they are cropped to)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None
    hflip: bool = True  # off for digits, which a mirror turns into non-digits
    resized_crop: bool = False  # train crop: ImageNet's random-resized crop instead of pad-4
    # Image folders: the digest of the files' paths, sizes and modification times (the image
    # check's), computed when first called.
    tree_state_of: Callable[[], str] | None = None


Reader = Callable[[str | None, bool], Source]  # (root, download) -> Source
DATASETS: Registry[Reader] = Registry("dataset")


def dataset_error(name: str, problem: str) -> KdistillError:
    return KdistillError(f"dataset '{name}': {problem}")


def missing_files_error(
    name: str, title: str, root: Path, expected: str, hint: str = DOWNLOAD_HINT
) -> KdistillError:
    return dataset_error(
        name, f"no {title} files under {root}{missing_path_hint(root)} (expected {expected}); put them there, {hint}"
    )


def resolve_root(root: str | None, name: str) -> Path:
    return Path(root).expanduser() if root is not None else Path("data") / name


def _first_folder_with(candidates: list[Path], markers: tuple[str, ...]) -> Path | None:
    """The first candidate folder that holds one of the `markers` files."""
    return next((folder for folder in candidates if any((folder / m).is_file() for m in markers)), None)


def _download(name: str, root: Path, fetch: Callable[[], object]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    try:
        fetch()
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision raises RuntimeError
        raise dataset_error(
            name, f"download into {root} failed ({exc}); put the files there by hand or set data.root=..."
        ) from exc


def _find_or_download(
    name: str, title: str, root: Path, folder: str, markers: tuple[str, ...], download: bool,
    fetch: Callable[[], object],
) -> Path:
    """The data set's folder: `root/folder` (as torchvision lays it out) or `root` itself."""
    candidates = [root / folder, root]
    found = _first_folder_with(candidates, markers)
    if found is None and download:
        _download(name, root, fetch)
        found = _first_folder_with(candidates, markers)
    if found is None:
        raise missing_files_error(name, title, root, f"{folder}/{markers[0]}")
    return found


def _arrays(images: np.ndarray, labels: np.ndarray) -> ImageArrays:
    """Tensors that own their memory (the arrays may be read-only views of a file's bytes)."""
    return ImageArrays(torch.tensor(images), torch.tensor(labels, dtype=torch.int64))


# --- CIFAR ---------------------------------------------------------------------------------


# All that the CIFAR pickles name: numpy's array and scalar rebuilders (under numpy 1's and
# numpy 2's module names) and the codec Python 3 pickles wrap bytes in. Dicts, lists and
# strings need no name. Anything else in a data file could only be code to run.
DATA_PICKLE_NAMES = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class RefusedPickleName(pickle.UnpicklingError):
    pass


class DataUnpickler(pickle.Unpickler):
    """Builds only the containers and numpy arrays a data file holds: a pickle that names any
    other function or class is refused before anything of it runs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in DATA_PICKLE_NAMES:
            raise RefusedPickleName(f"{module}.{name}")
        return super().find_class(module, name)


def _load_pickle(name: str, path: Path) -> dict:
    if not path.is_file():
        raise dataset_error(name, f"missing file {path}; put the complete data set folder there")
    try:
        with open(path, "rb") as file:
            entry = DataUnpickler(file, encoding="latin1").load()  # the files are Python 2 pickles
    except RefusedPickleName as exc:
        raise dataset_error(
            name, f"{path} asks to call {exc} while loading, which a data file never does; refused, nothing "
            "of it ran: replace it with the original file from the data set's authors"
        ) from None
    except Exception as exc:  # a damaged pickle raises almost any type; all mean "unreadable"
        raise dataset_error(
            name, f"{path} is not a readable pickle ({first_line(exc)}); replace it with the original file"
        ) from None
    if not isinstance(entry, dict):
        raise dataset_error(
            name, f"{path} holds a {type(entry).__name__}, not the dict of a CIFAR file; replace it with the original"
        )
    return entry


def _cifar_batch(name: str, path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _load_pickle(name, path)
    data, labels = np.asarray(entry.get("data")), np.asarray(entry.get(label_key))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise dataset_error(
            name, f"{path} does not hold N x 3072 pixels and N '{label_key}'; replace it with the original"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar(
    name: str, title: str, root: str | None, download: bool, *, folder: str, train_files: list[str],
    test_file: str, label_key: str, num_classes: int, meta_file: str, names_key: str,
    fetch: Callable[[Path], object], mean: tuple[float, ...], std: tuple[float, ...],
) -> Source:
    root_path = resolve_root(root, name)
    found = _find_or_download(
        name, title, root_path, folder, (train_files[0],), download, lambda: fetch(root_path)
    )
    batches = [_cifar_batch(name, found / file, label_key) for file in train_files]
    train = _arrays(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    test = _arrays(*_cifar_batch(name, found / test_file, label_key))
    meta = found / meta_file
    class_names = list(_load_pickle(name, meta)[names_key]) if meta.is_file() else None
    return Source(
        train, test, num_classes=num_classes, in_chans=3, image_size=32, mean=mean, std=std,
        class_names=class_names,
    )


@DATASETS.register("cifar10")
def read_cifar10(root: str | None, download: bool) -> Source:
    return _read_cifar(
        "cifar10", "CIFAR-10", root, download, folder="cifar-10-batches-py",
        train_files=[f"data_batch_{i}" for i in range(1, 6)], test_file="test_batch",
        label_key="labels", num_classes=10, meta_file="batches.meta", names_key="label_names",
        fetch=lambda path: tv_datasets.CIFAR10(path, download=True),
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    )


@DATASETS.register("cifar100")
def read_cifar100(root: str | None, download: bool) -> Source:
    return _read_cifar(
        "cifar100", "CIFAR-100", root, download, folder="cifar-100-python",
        train_files=["train"], test_file="test",
        label_key="fine_labels", num_classes=100, meta_file="meta", names_key="fine_label_names",
        fetch=lambda path: tv_datasets.CIFAR100(path, download=True),
        mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761),  # as in the CRD benchmark
    )


# --- MNIST-like idx files ------------------------------------------------------------------


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 idx file (gzipped or not) of `ndim` dimensions, shaped as its header says."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise KdistillError(f"cannot read {path} ({exc}); replace it with the original file") from None
    magic = bytes([0, 0, 0x08, ndim])  # 0x08: unsigned bytes
    header = 4 + 4 * ndim
    if raw[:4] != magic or len(raw) < header:
        raise KdistillError(
            f"{path} is not a {ndim}-d uint8 idx file (magic number 0x{raw[:4].hex() or 'none'}, expected "
            f"0x{magic.hex()}); replace it with the original file"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        size = "x".join(map(str, shape))
        raise KdistillError(
            f"{path} holds {len(raw) - header} bytes of data but its header says {size}; "
            "the file is truncated or damaged: replace it with the original file"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _idx_path(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _read_idx_split(name: str, folder: Path, prefix: str) -> ImageArrays:
    paths = {}
    for kind in ("images-idx3", "labels-idx1"):
        stem = f"{prefix}-{kind}-ubyte"
        paths[kind] = _idx_path(folder, stem)
        if paths[kind] is None:
            raise dataset_error(name, f"missing {folder / stem} (or .gz); put the four idx files in {folder}")
    images, labels = read_idx(paths["images-idx3"], ndim=3), read_idx(paths["labels-idx1"], ndim=1)
    if len(images) != len(labels):
        raise dataset_error(
            name, f"{paths['images-idx3']} holds {len(images)} images but {paths['labels-idx1']} "
            f"{len(labels)} labels; replace them with the original files",
        )
    return _arrays(images[:, None], labels)


def _read_mnist_like(
    name: str, title: str, root: Path, download: bool, torchvision_class: type, **facts
) -> Source:
    marker = "train-images-idx3-ubyte"
    folder = _find_or_download(
        name, title, root, f"{torchvision_class.__name__}/raw", (marker, f"{marker}.gz"), download,
        lambda: torchvision_class(root, download=True),
    )
    train, test = _read_idx_split(name, folder, "train"), _read_idx_split(name, folder, "t10k")
    return Source(train, test, num_classes=10, in_chans=1, image_size=train.images.shape[-1], **facts)


@DATASETS.register("fashion-mnist")
def read_fashion_mnist(root: str | None, download: bool) -> Source:
    if root is None and DEBIAN_FASHION_MNIST.is_dir():
        root = str(DEBIAN_FASHION_MNIST)
    return _read_mnist_like(
        "fashion-mnist", "Fashion-MNIST", resolve_root(root, "fashion-mnist"), download,
        tv_datasets.FashionMNIST, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
        class_names=FASHION_MNIST_CLASSES,
    )


@DATASETS.register("mnist")
def read_mnist(root: str | None, download: bool) -> Source:
    return _read_mnist_like(
        "mnist", "MNIST", resolve_root(root, "mnist"), download, tv_datasets.MNIST,
        mean=(0.1307,), std=(0.3081,), class_names=[str(d) for d in range(10)], hflip=False,
    )


# --- STL-10 --------------------------------------------------------------------------------

STL10_SIDE = 96
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _read_stl10_split(name: str, folder: Path, split: str) -> ImageArrays:
    images_path, labels_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise dataset_error(name, f"missing {path}; put the complete stl10_binary folder there")
    pixels, labels = np.fromfile(images_path, np.uint8), np.fromfile(labels_path, np.uint8)
    image_bytes = 3 * STL10_SIDE * STL10_SIDE
    sizes_match = len(pixels) == image_bytes * len(labels)
    if not sizes_match or not np.all((labels >= 1) & (labels <= 10)):
        raise dataset_error(
            name, f"{images_path} ({len(pixels)} bytes) and {labels_path} ({len(labels)} labels) are not "
            f"N images of {image_bytes} bytes with N labels in 1..10; replace them with the original files",
        )
    # The format stores each channel column by column: transpose to row-major.
    images = pixels.reshape(-1, 3, STL10_SIDE, STL10_SIDE).transpose(0, 1, 3, 2)
    return _arrays(images, labels - 1)


@DATASETS.register("stl10")
def read_stl10(root: str | None, download: bool) -> Source:
    root_path = resolve_root(root, "stl10")
    folder = _find_or_download(
        "stl10", "STL-10", root_path, "stl10_binary", ("train_X.bin",), download,
        lambda: tv_datasets.STL10(root_path, split="train", download=True),
    )
    names_file = folder / "class_names.txt"
    class_names = names_file.read_text().split() if names_file.is_file() else STL10_CLASSES
    return Source(
        _read_stl10_split("stl10", folder, "train"), _read_stl10_split("stl10", folder, "test"),
        num_classes=10, in_chans=3, image_size=STL10_SIDE, class_names=class_names,
        mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
    )


# --- Folder data sets (streamed) -----------------------------------------------------------


TINY_IMAGENET = "tiny-imagenet"


def _tiny_imagenet_train(folder: Path, class_index: dict[str, int]) -> ImageFiles:
    paths, labels = [], []
    for wnid, label in class_index.items():
        files = sorted(str(p) for p in (folder / "train" / wnid / "images").glob("*.JPEG"))
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise missing_files_error(TINY_IMAGENET, "Tiny-ImageNet image", folder, "train/<wnid>/images/*.JPEG")
    return ImageFiles(paths, torch.tensor(labels))


def _tiny_imagenet_val(folder: Path, class_index: dict[str, int]) -> ImageFiles:
    """The labelled validation images, used as the test split (the test images have no labels)."""
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise missing_files_error(TINY_IMAGENET, "Tiny-ImageNet", folder, "val/val_annotations.txt")
    paths, labels = [], []
    for line in filter(str.strip, annotations.read_text().splitlines()):
        file_name, wnid = line.split("\t")[:2]
        if wnid not in class_index:
            raise dataset_error(
                TINY_IMAGENET, f"{annotations} names class {wnid}, which {folder / 'wnids.txt'} lacks"
            )
        paths.append(str(folder / "val" / "images" / file_name))
        labels.append(class_index[wnid])
    return ImageFiles(paths, torch.tensor(labels))


@DATASETS.register(TINY_IMAGENET)
def read_tiny_imagenet(root: str | None, download: bool) -> Source:
    root_path = resolve_root(root, TINY_IMAGENET)
    folder = _find_or_download(
        TINY_IMAGENET, "Tiny-ImageNet", root_path, "tiny-imagenet-200", ("wnids.txt",), download,
        lambda: download_and_extract_archive(TINY_IMAGENET_URL, root_path),
    )
    wnids = sorted((folder / "wnids.txt").read_text().split())  # sorted, as an ImageFolder orders them
    class_index = {wnid: i for i, wnid in enumerate(wnids)}
    words = folder / "words.txt"  # "<wnid>\t<name>, <synonym>, ..."
    names = dict(line.split("\t", 1) for line in words.read_text().splitlines()) if words.is_file() else {}
    return Source(
        _tiny_imagenet_train(folder, class_index), _tiny_imagenet_val(folder, class_index),
        num_classes=len(wnids), in_chans=3, image_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        class_names=[names.get(wnid, wnid).split(",")[0] for wnid in wnids],
    )


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:  # a symlink loop: not a folder (the check reports it as a bad image file)
        return False


def _image_files(class_folder: str, visited: set[str]) -> list[str]:
    """The image files under `class_folder`, ordered as torchvision's `make_dataset` orders them
    (by folder path, then by name). Each real folder is entered once: a symlink to a folder
    already `visited` or to an ancestor (a loop, or the same images under a second label) is
    not followed. File symlinks are listed even when dangling: the scan reports them."""
    listed, pending = [], [class_folder]
    while pending:
        folder = pending.pop()
        real_folder = os.path.realpath(folder)
        names = []
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise dataset_error(
                "imagefolder", f"cannot list {folder} ({exc.strerror}); check its access rights"
            ) from None
        for entry in entries:
            if _is_folder(entry):
                target = os.path.realpath(entry.path)
                if target not in visited and not Path(real_folder).is_relative_to(target):
                    visited.add(target)
                    pending.append(entry.path)
            elif has_file_allowed_extension(entry.name, IMG_EXTENSIONS):
                names.append(entry.name)
        listed.append((folder, sorted(names)))
    return [os.path.join(folder, name) for folder, names in sorted(listed) for name in names]


def _image_folder_split(folder: Path, class_to_idx: dict[str, int]) -> ImageFiles:
    class_folders = {name: os.path.join(folder, name) for name in class_to_idx}
    visited = {os.path.realpath(path) for path in class_folders.values()}  # no class inside another
    paths, labels = [], []
    for name, class_folder in sorted(class_folders.items()):
        files = _image_files(class_folder, visited) if os.path.isdir(class_folder) else []
        if not files:
            raise dataset_error(
                "imagefolder", f"no images under {folder} for class '{name}'; expected {folder}/{name}/<image>.jpg|.png"
            )
        paths += files
        labels += [class_to_idx[name]] * len(files)
    return ImageFiles(paths, torch.tensor(labels))


@DATASETS.register("imagefolder")
def read_image_folder(root: str | None, download: bool) -> Source:
    """An ImageNet-style tree: root/train/<class>/<image> and root/val/<class>/<image>."""
    root_path = resolve_root(root, "imagefolder")
    train_folder, val_folder = root_path / "train", root_path / "val"
    if not train_folder.is_dir() or not val_folder.is_dir():
        raise missing_files_error(
            "imagefolder", "image", root_path, "train/<class>/<image> and val/<class>/<image>",
            hint="or set data.root=... to the folder that holds train/ and val/",
        )
    try:
        classes, class_to_idx = find_classes(train_folder)
    except FileNotFoundError:
        raise dataset_error(
            "imagefolder", f"no class folders under {train_folder}; expected {train_folder}/<class>/<image>"
        ) from None
    return Source(
        _image_folder_split(train_folder, class_to_idx), _image_folder_split(val_folder, class_to_idx),
        num_classes=len(classes), in_chans=3, image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        class_names=classes, resized_crop=True,
    )


# --- Embedded ------------------------------------------------------------------------------


def embedded_path():  # an importlib.resources Traversable
    """The shipped file (see scripts/build_embedded.py), found inside the installed package."""
    return resources.files(__package__).joinpath("embedded", EMBEDDED_FILE)


@functools.cache
def _embedded_arrays() -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(lzma.decompress(embedded_path().read_bytes()))) as archive:
        return dict(archive)


@DATASETS.register("embedded")
def read_embedded(root: str | None, download: bool) -> Source:
    """A class-balanced 10k/2k subset of Fashion-MNIST shipped in the package (root is unused)."""
    arrays = _embedded_arrays()
    train = _arrays(arrays["train_images"][:, None], arrays["train_labels"])
    test = _arrays(arrays["test_images"][:, None], arrays["test_labels"])
    return Source(
        train, test, num_classes=10, in_chans=1, image_size=28, mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD, class_names=FASHION_MNIST_CLASSES,
    )
