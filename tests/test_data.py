"""The data layer: keyed augmentation, readers of each format, the embedded set, loaders."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from PIL import Image

from kdistill.config import DataConfig
from kdistill.data import (
    Loaders,
    Stream,
    build_loaders,
    crop_flip,
    crop_flip_params,
    keyed_randint,
    keyed_uniform,
    list_datasets,
    resized_crop_params,
)
from kdistill.data.augment import CROP_PAD
from kdistill.data.loaders import BatchOrder, split_validation
from kdistill.data.sources import DATASETS, DEBIAN_FASHION_MNIST, ImageArrays, embedded_path, read_idx
from kdistill.data.streaming import read_rgb
from kdistill.errors import KdistillError

CPU = torch.device("cpu")
CIFAR_TRAIN_PER_BATCH, CIFAR_TEST = 20, 30


# --- files in the real formats -------------------------------------------------------------


def random_images(rng: np.random.Generator, count: int, channels: int, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (count, channels, height, width), dtype=np.uint8)


def write_pickle(path: Path, entry: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(entry, file)


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, label_key: str = "labels") -> None:
    write_pickle(path, {"data": images.reshape(len(images), -1), label_key: labels.tolist()})


def write_cifar10(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Five train batches and a test batch; returns the train images and labels as written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = random_images(rng, 5 * CIFAR_TRAIN_PER_BATCH, 3, 32, 32)
    labels = rng.integers(0, 10, len(images))
    for i, part in enumerate(np.split(np.arange(len(images)), 5)):
        write_cifar_batch(folder / f"data_batch_{i + 1}", images[part], labels[part])
    test_images = random_images(rng, CIFAR_TEST, 3, 32, 32)
    write_cifar_batch(folder / "test_batch", test_images, rng.integers(0, 10, CIFAR_TEST))
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return images, labels


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("cifar10")
    return (root, *write_cifar10(root, np.random.default_rng(0)))


def cifar_loaders(root: Path, seed: int = 3, rank: int = 0, world_size: int = 1, **options) -> Loaders:
    return build_loaders(DataConfig(name="cifar10", root=str(root), **options), CPU, seed, rank, world_size)


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_idx_set(folder: Path, rng: np.random.Generator, suffix: str) -> dict[str, tuple[np.ndarray, ...]]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, count in (("train", 12), ("t10k", 5)):
        arrays[prefix] = (rng.integers(0, 256, (count, 28, 28)), rng.integers(0, 10, count))
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", arrays[prefix][0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", arrays[prefix][1])
    return arrays


def write_image(image: torch.Tensor, path: Path) -> None:
    """Save a uint8 [3, H, W] tensor; the format follows the file's suffix."""
    file_format = "PNG" if path.suffix == ".png" else "JPEG"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, format=file_format)


def reference_crop_flip(image: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    """The pad-4 crop and flip of one [C, H, W] image, written plainly."""
    height, width = image.shape[-2:]
    padded = nnf.pad(image, (CROP_PAD,) * 4)
    crop = padded[:, top : top + height, left : left + width]
    return crop.flip(-1) if flip else crop


def views_by_index(loader, epoch: int = 0) -> dict[int, torch.Tensor]:
    loader.set_epoch(epoch)
    return {int(i): view for batch in loader for i, view in zip(batch["index"], batch["image"], strict=True)}


def all_equal(views: dict[int, torch.Tensor], reference: dict[int, torch.Tensor]) -> bool:
    """Whether every view also in `reference` equals it (and there is at least one)."""
    shared = views.keys() & reference.keys()
    return bool(shared) and all(torch.equal(views[i], reference[i]) for i in shared)


# --- (a) batched augmentation = per-image reference ----------------------------------------


def test_batched_crop_flip_matches_per_image_reference():
    images = torch.randint(0, 256, (40, 3, 12, 10), dtype=torch.uint8)
    top, left, flip = crop_flip_params(seed=5, epoch=2, index=torch.arange(40))
    # The extreme offsets and both flips, whatever the hash gives.
    top[:4], left[:4] = torch.tensor([0, 8, 0, 8]), torch.tensor([0, 8, 8, 0])
    flip[:4] = torch.tensor([True, False, True, False])
    batched = crop_flip(images, top, left, flip)
    for i in range(len(images)):
        expected = reference_crop_flip(images[i], int(top[i]), int(left[i]), bool(flip[i]))
        assert torch.equal(batched[i], expected)


def test_loader_train_batch_is_the_reference_view_of_the_stored_image(cifar10):
    root, images, _ = cifar10
    train = cifar_loaders(root, seed=3, batch_size=16).train
    train.set_epoch(4)
    batch = next(iter(train))
    top, left, flip = crop_flip_params(3, 4, batch["index"])
    for i, index in enumerate(batch["index"].tolist()):
        view = reference_crop_flip(torch.from_numpy(images[index]), int(top[i]), int(left[i]), bool(flip[i]))
        assert torch.allclose(batch["image"][i], train.normalize(view[None])[0])


# --- (b) a sample's view does not depend on how it is batched or distributed -------------


def test_view_is_independent_of_batch_size_order_and_world_size(cifar10):
    root = cifar10[0]
    reference = views_by_index(cifar_loaders(root, batch_size=7).train, epoch=1)
    for batch_size in (1, 64):
        assert all_equal(views_by_index(cifar_loaders(root, batch_size=batch_size).train, 1), reference)

    reordered = cifar_loaders(root, batch_size=5).train
    reordered.order.batches = lambda epoch: list(torch.arange(99, -1, -1).split(5))
    assert all_equal(views_by_index(reordered, 1), reference)

    single = views_by_index(cifar_loaders(root, batch_size=10).train, epoch=1)
    ranks = [
        views_by_index(cifar_loaders(root, rank=rank, world_size=2, batch_size=10).train, epoch=1)
        for rank in (0, 1)
    ]
    assert not ranks[0].keys() & ranks[1].keys()
    assert ranks[0].keys() | ranks[1].keys() == set(range(100)) == single.keys()
    assert all_equal(ranks[0], single) and all_equal(ranks[1], single)


def test_distributed_order_pads_by_wrapping_to_equal_lengths():
    assert [len(BatchOrder(101, 10, seed=0, rank=r, world_size=2, train=True)) for r in (0, 1)] == [5, 5]
    drawn = [torch.cat(BatchOrder(101, 51, 0, r, 2, train=True).batches(0)) for r in (0, 1)]
    assert len(drawn[0]) == len(drawn[1]) == 51
    assert set(torch.cat(drawn).tolist()) == set(range(101))  # one sample wraps round as padding
    shards = [torch.cat(BatchOrder(101, 8, 0, r, 2, train=False).batches(0)) for r in (0, 1)]
    assert sorted(torch.cat(shards).tolist()) == list(range(101))  # eval: each sample once, no padding


def test_keyed_values_are_the_same_for_any_batching_and_in_range():
    index = torch.arange(1000)
    whole = keyed_uniform(7, 3, index, Stream.FLIP)
    assert torch.equal(torch.cat([keyed_uniform(7, 3, part, Stream.FLIP) for part in index.split(7)]), whole)
    assert whole.min() >= 0 and whole.max() < 1 and keyed_uniform(7, 3, 5, Stream.FLIP) == whole[5]
    assert set(keyed_randint(7, 3, index, Stream.CROP_TOP, 9).tolist()) == set(range(9))
    assert not torch.equal(whole, keyed_uniform(7, 3, index, Stream.CROP_TOP))  # streams differ
    assert not torch.equal(whole, keyed_uniform(8, 3, index, Stream.FLIP))
    assert keyed_randint(-1, 2**40, torch.tensor([2**31]), 1, 10).item() in range(10)  # no overflow


# --- (c) views vary across epochs and images -----------------------------------------------


def test_views_change_with_epoch_and_differ_per_image(cifar10):
    train = cifar_loaders(cifar10[0], batch_size=10).train
    first, second = views_by_index(train, epoch=0), views_by_index(train, epoch=1)
    assert sum(not torch.equal(first[i], second[i]) for i in first) > 0.8 * len(first)

    top, left, flip = crop_flip_params(seed=0, epoch=0, index=torch.arange(64))
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) > 20  # crops are drawn per image
    assert set(flip.tolist()) == {False, True}


def test_resized_crop_box_fits_and_varies():
    boxes = {resized_crop_params(seed=1, epoch=0, index=i, height=50, width=80) for i in range(30)}
    assert len(boxes) > 20
    for top, left, height, width in boxes:
        assert top >= 0 and left >= 0 and top + height <= 50 and left + width <= 80


# --- (d) readers on small files in the real formats ----------------------------------------


def test_cifar10_reader(cifar10):
    root, images, labels = cifar10
    source = DATASETS.get("cifar10")(str(root), False)
    assert torch.equal(source.train.images, torch.from_numpy(images))
    assert source.train.labels.tolist() == labels.tolist()
    assert source.test.images.shape == (CIFAR_TEST, 3, 32, 32)
    assert source.num_classes == 10 and source.class_names[3] == "class3"


def test_cifar100_reader(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images, labels = random_images(np.random.default_rng(1), 6, 3, 32, 32), np.array([0, 99, 5, 5, 42, 7])
    write_cifar_batch(folder / "train", images, labels, label_key="fine_labels")
    write_cifar_batch(folder / "test", images[:2], labels[:2], label_key="fine_labels")
    write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    source = DATASETS.get("cifar100")(str(tmp_path), False)
    assert torch.equal(source.train.images, torch.from_numpy(images))
    assert source.train.labels.tolist() == labels.tolist() and source.test.labels.tolist() == [0, 99]
    assert source.num_classes == 100 and source.class_names[99] == "c99"


@pytest.mark.parametrize(
    ("name", "layout", "suffix"), [("fashion-mnist", "FashionMNIST/raw", ".gz"), ("mnist", "", "")]
)
def test_idx_reader_torchvision_layout_gzip_and_flat_plain(tmp_path, name, layout, suffix):
    arrays = write_idx_set(tmp_path / layout, np.random.default_rng(2), suffix)
    source = DATASETS.get(name)(str(tmp_path), False)
    for split, prefix in ((source.train, "train"), (source.test, "t10k")):
        images, labels = arrays[prefix]
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(split.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
        assert split.labels.tolist() == labels.tolist()
    assert source.in_chans == 1 and source.num_classes == 10


def test_stl10_reader_reads_column_major_images(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = {split: random_images(rng, count, 3, 96, 96) for split, count in (("train", 3), ("test", 2))}
    for split, split_images in images.items():
        split_images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # the format is column-major
        np.array([1, 10, 4][: len(split_images)], np.uint8).tofile(folder / f"{split}_y.bin")
    source = DATASETS.get("stl10")(str(tmp_path), False)
    assert torch.equal(source.train.images, torch.from_numpy(images["train"]))
    assert source.train.labels.tolist() == [0, 9, 3] and source.test.labels.tolist() == [0, 9]
    assert source.num_classes == 10 and source.image_size == 96


def plain_colour(label: int, side: int = 64) -> torch.Tensor:
    return torch.full((3, side, side), 60 * label, dtype=torch.uint8)


def write_tiny_imagenet(root: Path) -> None:
    """Three classes of two 64x64 single-colour JPEGs (colour = 60 * class), three val images."""
    folder = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # unsorted, as in the real wnids.txt
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01\tfish, trout\nn02\tbird\nn03\tcar\n")
    for label, wnid in enumerate(sorted(wnids)):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        for k in range(2):
            write_image(plain_colour(label), folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
    annotations = [("val_0.JPEG", "n02"), ("val_1.JPEG", "n03"), ("val_2.JPEG", "n01")]
    for file_name, wnid in annotations:
        write_image(plain_colour(sorted(wnids).index(wnid)), folder / "val" / "images" / file_name)
    lines = [f"{file_name}\t{wnid}\t0\t0\t63\t63\n" for file_name, wnid in annotations]
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))


def tiny_imagenet_loaders(root: Path, seed: int = 0, **options) -> Loaders:
    return build_loaders(DataConfig("tiny-imagenet", str(root), batch_size=2, **options), CPU, seed)


def test_tiny_imagenet_reader_and_streamed_loader(tmp_path):
    write_tiny_imagenet(tmp_path)
    source = DATASETS.get("tiny-imagenet")(str(tmp_path), False)
    assert source.num_classes == 3 and source.class_names == ["fish", "bird", "car"]
    assert source.train.labels.tolist() == [0, 0, 1, 1, 2, 2] and source.test.labels.tolist() == [1, 2, 0]

    loaders = tiny_imagenet_loaders(tmp_path, eval_batch_size=2, num_workers=0)
    test_batches = list(loaders.test)
    assert [len(batch["index"]) for batch in test_batches] == [2, 1]
    first = test_batches[0]
    assert first["image"].shape == (2, 3, 64, 64) and first["label"].tolist() == [1, 2]
    pixels = first["image"] * loaders.test.normalize.std + loaders.test.normalize.mean
    assert torch.allclose(pixels.mean((1, 2, 3)), torch.tensor([60.0, 120.0]), atol=3)  # JPEG is lossy

    small = tiny_imagenet_loaders(tmp_path, image_size=32, num_workers=0)
    assert next(iter(small.train))["image"].shape == (2, 3, 32, 32) and small.info.image_size == 32


def test_streamed_views_are_the_same_with_worker_processes(tmp_path):
    write_tiny_imagenet(tmp_path)
    views = [views_by_index(tiny_imagenet_loaders(tmp_path, 4, num_workers=w).train, 2) for w in (0, 2)]
    assert views[0].keys() == views[1].keys() == set(range(6)) and all_equal(views[0], views[1])


def write_image_folder(root: Path, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Two classes of 40x30 random PNGs: three per class in train/, two in val/."""
    written = {}
    for split, per_class in (("train", 3), ("val", 2)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                path = root / split / name / f"{k}.png"
                written[str(path)] = torch.from_numpy(random_images(rng, 1, 3, 40, 30)[0])
                write_image(written[str(path)], path)
    return written


def test_image_folder_reader_and_loader(tmp_path):
    written = write_image_folder(tmp_path, np.random.default_rng(4))
    source = DATASETS.get("imagefolder")(str(tmp_path), False)
    assert source.class_names == ["cat", "dog"] and source.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert source.test.labels.tolist() == [0, 0, 1, 1]
    assert all(torch.equal(read_rgb(path, checked=True), image) for path, image in written.items())  # PNG is lossless

    cfg = DataConfig(
        "imagefolder", str(tmp_path), batch_size=3, eval_batch_size=4, image_size=16, num_workers=0
    )
    loaders = build_loaders(cfg, CPU, seed=0)
    assert next(iter(loaders.train))["image"].shape == (3, 3, 16, 16)
    test_batch = next(iter(loaders.test))
    assert test_batch["image"].shape == (4, 3, 16, 16) and test_batch["label"].tolist() == [0, 0, 1, 1]


# --- (e) the embedded set ------------------------------------------------------------------


def test_embedded_set_is_a_balanced_fashion_mnist_subset():
    assert len(embedded_path().read_bytes()) <= 5 * 1024 * 1024
    source = DATASETS.get("embedded")(None, False)
    for split, per_class in ((source.train, 1000), (source.test, 200)):
        assert split.images.dtype == torch.uint8 and split.images.shape == (10 * per_class, 1, 28, 28)
        assert torch.bincount(split.labels).tolist() == [per_class] * 10
    assert "embedded" in list_datasets() and DataConfig().name == "embedded"


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="needs the full Fashion-MNIST")
def test_embedded_images_are_the_fashion_mnist_images_they_name():
    from kdistill.data.sources import _embedded_arrays

    arrays = _embedded_arrays()
    index = arrays["test_source_index"].astype(np.int64)
    full_images = read_idx(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", ndim=3)
    full_labels = read_idx(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz", ndim=1)
    assert np.array_equal(full_images[index], arrays["test_images"])
    assert np.array_equal(full_labels[index], arrays["test_labels"])


# --- (f) validation split ------------------------------------------------------------------


def test_validation_split_is_stratified_disjoint_and_deterministic():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    split = ImageArrays(torch.arange(100).view(100, 1, 1, 1), labels)  # the "image" is the sample's index
    train, val = split_validation(split, 0.1, seed=0)
    assert torch.bincount(val.labels).tolist() == [5, 3, 2]
    train_ids, val_ids = set(train.images.flatten().tolist()), set(val.images.flatten().tolist())
    assert not train_ids & val_ids and train_ids | val_ids == set(range(100))
    assert torch.equal(split_validation(split, 0.1, seed=0)[1].images, val.images)
    assert not torch.equal(split_validation(split, 0.1, seed=1)[1].images, val.images)


def test_loaders_with_validation_split(cifar10):
    loaders = cifar_loaders(cifar10[0], val_fraction=0.2, batch_size=8, eval_batch_size=50)
    assert loaders.info.train_size + loaders.val.dataset_size == 100
    assert loaders.train.dataset_size == loaders.info.train_size == len(loaders.train.labels)
    assert cifar_loaders(cifar10[0]).val is None


# --- (g) errors ----------------------------------------------------------------------------


def test_missing_folder_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "missing"
    expected = f"no CIFAR-100 files under {missing} \\(expected cifar-100-python/train\\).*data.root="
    with pytest.raises(KdistillError, match=expected):
        build_loaders(DataConfig("cifar100", str(missing)), CPU, 0)


def test_malformed_idx_names_the_file(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(5), "")
    bad = tmp_path / "train-images-idx3-ubyte"
    write_idx(bad, np.zeros((12, 28, 28)), type_code=0x0D)  # float data, not uint8
    with pytest.raises(KdistillError, match=f"{bad} is not a 3-d uint8 idx file \\(magic number 0x00000d03"):
        DATASETS.get("mnist")(str(tmp_path), False)
    write_idx(bad, np.zeros((12, 28, 28)))
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(KdistillError, match=f"{bad} holds 84 bytes of data but its header says 12x28x28"):
        DATASETS.get("mnist")(str(tmp_path), False)


def test_empty_image_folder_names_the_path(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(KdistillError, match=f"no images under {tmp_path / 'train'}"):
        build_loaders(DataConfig("imagefolder", str(tmp_path)), CPU, 0)


def test_unknown_name_and_bad_options():
    with pytest.raises(KdistillError, match="did you mean cifar10"):
        build_loaders(DataConfig("cifar-10"), CPU, 0)
    with pytest.raises(KdistillError, match="data.val_fraction"):
        build_loaders(DataConfig(val_fraction=1.0), CPU, 0)


# --- (h) the loaders -----------------------------------------------------------------------


@pytest.mark.parametrize("device_resident", [True, False])
def test_loader_batches(cifar10, device_resident):
    root, _, labels = cifar10
    loaders = cifar_loaders(root, batch_size=16, eval_batch_size=8, device_resident=device_resident)
    train_batches = list(loaders.train)
    assert len(loaders.train) == len(train_batches) == 100 // 16  # the last partial batch is dropped
    for batch in train_batches:
        assert batch.keys() == {"image", "label", "index"}
        assert batch["image"].dtype == torch.float32 and batch["image"].shape == (16, 3, 32, 32)
        assert batch["label"].dtype == batch["index"].dtype == torch.int64
        assert all(tensor.device == CPU for tensor in batch.values())
        assert batch["label"].tolist() == labels[batch["index"]].tolist()

    test_batches = list(loaders.test)
    assert len(loaders.test) == len(test_batches) == 4 and len(test_batches[-1]["index"]) == CIFAR_TEST - 24
    assert torch.cat([batch["index"] for batch in test_batches]).tolist() == list(range(CIFAR_TEST))
    assert loaders.test.dataset_size == CIFAR_TEST and loaders.test.labels.dtype == torch.int64

    test_images = DATASETS.get("cifar10")(str(root), False).test.images
    expected = loaders.test.normalize(test_images[test_batches[1]["index"]])
    assert torch.allclose(test_batches[1]["image"], expected)  # eval batches are not augmented
    assert loaders.info.num_classes == 10 and loaders.info.in_chans == 3 and loaders.info.train_size == 100


def test_in_memory_sets_resize_once_at_load(cifar10):
    loaders = cifar_loaders(cifar10[0], image_size=24, batch_size=10)
    assert loaders.info.image_size == 24 and next(iter(loaders.train))["image"].shape == (10, 3, 24, 24)
