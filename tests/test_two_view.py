"""The strong view of two-view methods: its operations, its keyed randomness, and the loaders."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as F

from kdistill.config import DataConfig
from kdistill.data import build_loaders
from kdistill.data.sources import DATASETS
from kdistill.data.two_view import (
    RAND_AUGMENT_OPS,
    cutout,
    cutout_boxes,
    fill_boxes,
    mean_fill,
    rand_augment,
    rand_augment_params,
    strong_view,
)

CPU = torch.device("cpu")
SEED = 7


def random_images(count: int, channels: int, height: int = 20, width: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, height, width), generator=generator, dtype=torch.uint8)


def pil_shear(image: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """The reference's ShearX / ShearY: PIL's affine transform (nearest, zero fill) of one image."""
    pil = F.to_pil_image(image)
    return F.pil_to_tensor(pil.transform(pil.size, Image.AFFINE, coefficients)).view_as(image)


def torchvision_reference(name: str, image: torch.Tensor, magnitude: float, sign: float) -> torch.Tensor:
    """One image through torchvision's own scalar op (PIL's for the shears, as the reference draws
    them), with FixMatch's range for that op."""
    factor = 0.05 + 0.9 * magnitude
    shear = sign * 0.3 * magnitude
    height, width = image.shape[-2:]
    no_shear = [0.0, 0.0]
    return {
        "identity": lambda: image,
        "auto_contrast": lambda: F.autocontrast(image),
        "equalize": lambda: F.equalize(image),
        "brightness": lambda: F.adjust_brightness(image, factor),
        "color": lambda: F.adjust_saturation(image, factor),
        "contrast": lambda: F.adjust_contrast(image, factor),
        "sharpness": lambda: F.adjust_sharpness(image, factor),
        "posterize": lambda: F.posterize(image, 4 + int(4 * magnitude)),
        "solarize": lambda: F.solarize(image, 256 * magnitude) if 256 * magnitude <= 255 else image,
        "rotate": lambda: F.rotate(image, sign * 30 * magnitude),
        "shear_x": lambda: pil_shear(image, (1, shear, 0, 0, 1, 0)),
        "shear_y": lambda: pil_shear(image, (1, 0, 0, shear, 1, 0)),
        "translate_x": lambda: F.affine(image, 0.0, [sign * 0.3 * magnitude * width, 0.0], 1.0, no_shear),
        "translate_y": lambda: F.affine(image, 0.0, [0.0, sign * 0.3 * magnitude * height], 1.0, no_shear),
    }[name]()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", RAND_AUGMENT_OPS, ids=lambda op: op.__name__)
def test_batched_op_with_a_magnitude_per_image_matches_torchvision_per_image(op, channels):
    images = random_images(48, channels, seed=channels)
    generator = torch.Generator().manual_seed(1)
    magnitude = torch.rand(48, generator=generator)
    sign = torch.where(torch.rand(48, generator=generator) < 0.5, -1.0, 1.0)
    out = op(images, magnitude, sign)
    expected = torch.stack([torchvision_reference(op.__name__, images[i], float(magnitude[i]), float(sign[i]))
                            for i in range(48)])
    assert out.dtype == torch.uint8 and out.shape == images.shape
    if op.__name__.startswith("shear"):  # geometric, in PIL's convention: pixel-exact
        assert torch.equal(out, expected)
    difference = (out.int() - expected.int()).abs()
    # Float rounding of the blend may move a rare pixel by one level; nothing more.
    assert difference.max() <= 1 and (difference > 0).float().mean() < 1e-3


def test_ops_and_magnitudes_differ_between_images_and_cover_the_pool():
    ops, magnitude, sign = rand_augment_params(SEED, 0, torch.arange(256))
    assert ops.shape == magnitude.shape == sign.shape == (256, 2)
    for slot in range(2):
        assert set(ops[:, slot].tolist()) == set(range(len(RAND_AUGMENT_OPS)))
        assert magnitude[:, slot].unique().numel() == 256
    assert (ops[:, 0] != ops[:, 1]).any() and not torch.equal(magnitude[:, 0], magnitude[:, 1])
    assert ((magnitude >= 0) & (magnitude < 1)).all() and set(sign.unique().tolist()) == {-1.0, 1.0}
    assert abs(magnitude.mean().item() - 0.5) < 0.05 and abs(sign.mean().item()) < 0.15


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_view_keeps_dtype_range_and_shape_and_changes_every_image(channels):
    images = random_images(32, channels, 32, 32)
    index = torch.arange(100, 132)
    view = strong_view(images, SEED, 0, index, (128,) * channels)
    assert view.dtype == torch.uint8 and view.shape == images.shape
    assert view.min() >= 0 and view.max() <= 255 and view.float().std() > 20  # not flattened to a constant
    assert all(not torch.equal(view[i], images[i]) for i in range(32))


def test_strong_view_depends_on_seed_epoch_and_index_only_not_on_the_batch():
    images = random_images(24, 3, 32, 32, seed=3)
    index = torch.arange(500, 524)
    whole = strong_view(images, SEED, 2, index, (100, 110, 120))
    in_pieces = torch.cat([strong_view(images[i : i + 5], SEED, 2, index[i : i + 5], (100, 110, 120))
                           for i in range(0, 24, 5)])
    reversed_batch = strong_view(images.flip(0), SEED, 2, index.flip(0), (100, 110, 120)).flip(0)
    assert torch.equal(whole, in_pieces) and torch.equal(whole, reversed_batch)
    assert torch.equal(whole, strong_view(images, SEED, 2, index, (100, 110, 120)))
    for other in (strong_view(images, SEED + 1, 2, index, (100, 110, 120)),
                  strong_view(images, SEED, 3, index, (100, 110, 120))):
        assert all(not torch.equal(whole[i], other[i]) for i in range(24))


def test_rand_augment_leaves_its_input_alone():
    images = random_images(16, 3)
    kept = images.clone()
    rand_augment(images, SEED, 0, torch.arange(16))
    assert torch.equal(images, kept)


def reference_cutout(image: Image.Image, side: float, point_x: float, point_y: float, colour) -> Image.Image:
    """The reference's CutoutAbs with its random draws given: PIL's inclusive rectangle."""
    width, height = image.size
    left, top = int(max(0, point_x - side / 2.0)), int(max(0, point_y - side / 2.0))
    image = image.copy()
    if side > 0:
        ImageDraw.Draw(image).rectangle((left, top, min(width, left + side), min(height, top + side)), colour)
    return image


def test_cutout_boxes_match_the_reference_pil_rectangle_pixel_for_pixel():
    height, width, count = 20, 24, 300
    images = random_images(count, 3, height, width, seed=5)
    generator = torch.Generator().manual_seed(2)
    side = torch.rand(count, generator=generator, dtype=torch.float64) * 0.5 * width
    side[:5] = 0.0  # the reference leaves the image alone
    point_x = torch.rand(count, generator=generator, dtype=torch.float64) * width
    point_y = torch.rand(count, generator=generator, dtype=torch.float64) * height
    point_x[5:15], point_y[15:25] = 0.3, height - 0.2  # at the borders: shifted inward / clipped
    ours = fill_boxes(images, cutout_boxes(side, point_x, point_y, height, width), (125, 123, 114))
    expected = torch.stack([
        F.pil_to_tensor(reference_cutout(F.to_pil_image(images[i]), float(side[i]), float(point_x[i]),
                                         float(point_y[i]), (125, 123, 114)))
        for i in range(count)])
    assert torch.equal(ours, expected)
    assert torch.equal(ours[:5], images[:5])
    changed = (ours != images).any(dim=1)
    left_edge = changed[5:15].any(dim=1).float().argmax(dim=1)  # first filled column per image
    assert (left_edge == 0).all()  # at the left border the box starts at column 0 ...
    widths = changed[5:15].any(dim=1).sum(dim=1)
    assert (widths >= side[5:15].floor().long()).all()  # ... keeping its full side (shifted, not cut)


def test_cutout_draws_side_and_point_from_the_key():
    side_limit = 8  # half of 16
    images = torch.zeros(400, 3, 16, 16, dtype=torch.uint8)
    out = cutout(images, SEED, 0, torch.arange(400), (9, 8, 7))
    filled = (out != 0).any(dim=1)  # [B, H, W]
    assert torch.equal(out[:, 0][filled], torch.full_like(out[:, 0][filled], 9))
    heights, widths = filled.any(dim=2).sum(1), filled.any(dim=1).sum(1)
    assert torch.equal(filled.sum((1, 2)), heights * widths)  # one rectangle per image
    assert widths.max() <= side_limit + 1 and widths.max() >= side_limit  # inclusive edge: up to side + 1
    assert torch.equal(out, cutout(images, SEED, 0, torch.arange(400), (9, 8, 7)))
    assert not torch.equal(out, cutout(images, SEED, 1, torch.arange(400), (9, 8, 7)))


# --- the loaders ---------------------------------------------------------------------------


def write_cifar10(root: Path, train_count: int = 40) -> torch.Tensor:
    """A CIFAR-10 folder of random images; returns the train images as stored."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (train_count, 3, 32, 32), dtype=np.uint8)
    for i, part in enumerate(np.array_split(np.arange(train_count), 5)):
        entry = {"data": images[part].reshape(len(part), -1), "labels": rng.integers(0, 10, len(part)).tolist()}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(entry))
    test = {"data": images[:8].reshape(8, -1), "labels": [0] * 8}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    return torch.from_numpy(images)


def by_index(loader, key: str, epoch: int = 0) -> dict[int, torch.Tensor]:
    loader.set_epoch(epoch)
    return {int(i): view for batch in loader for i, view in zip(batch["index"], batch[key], strict=True)}


def test_in_memory_loader_adds_the_strong_view_of_each_stored_image(tmp_path):
    stored = write_cifar10(tmp_path)
    config = {"name": "cifar10", "root": str(tmp_path), "batch_size": 8}
    loaders = build_loaders(DataConfig(**config), CPU, seed=SEED, with_strong_view=True)
    batch = next(iter(loaders.train))
    assert batch.keys() == {"image", "label", "index", "image_strong"}
    assert batch["image_strong"].dtype == torch.float32 and batch["image_strong"].shape == batch["image"].shape
    assert all(not torch.equal(batch["image"][i], batch["image_strong"][i]) for i in range(8))
    assert "image_strong" not in next(iter(loaders.test))

    index = batch["index"]
    fill = mean_fill(DATASETS.get("cifar10")(str(tmp_path), False).mean)
    expected = loaders.train.normalize(strong_view(stored[index], SEED, 0, index, fill))
    torch.testing.assert_close(batch["image_strong"], expected)

    plain = build_loaders(DataConfig(**config), CPU, seed=SEED)
    assert "image_strong" not in next(iter(plain.train))
    weak_alone, weak_with_strong = by_index(plain.train, "image", 1), by_index(loaders.train, "image", 1)
    assert all(torch.equal(weak_alone[i], weak_with_strong[i]) for i in weak_alone)  # the weak view is unchanged
    other_batching = build_loaders(DataConfig(**config | {"batch_size": 5}), CPU, seed=SEED, with_strong_view=True)
    strong = by_index(loaders.train, "image_strong", 1)
    strong_rebatched = by_index(other_batching.train, "image_strong", 1)
    shared = strong.keys() & strong_rebatched.keys()
    assert len(shared) > 20 and all(torch.equal(strong[i], strong_rebatched[i]) for i in shared)


def write_image_folder(root: Path) -> None:
    rng = np.random.default_rng(1)
    for split, per_class in (("train", 4), ("val", 1)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{k}.png")


def test_streamed_loader_adds_the_strong_view_and_keeps_the_weak_one(tmp_path):
    write_image_folder(tmp_path)
    config = {"name": "imagefolder", "root": str(tmp_path), "batch_size": 4, "image_size": 16, "num_workers": 0}
    loaders = build_loaders(DataConfig(**config), CPU, seed=SEED, with_strong_view=True)
    batch = next(iter(loaders.train))
    assert batch["image_strong"].shape == batch["image"].shape == (4, 3, 16, 16)
    assert all(not torch.equal(batch["image"][i], batch["image_strong"][i]) for i in range(4))
    assert "image_strong" not in next(iter(loaders.test))

    plain = build_loaders(DataConfig(**config), CPU, seed=SEED)
    weak_alone, weak_with_strong = by_index(plain.train, "image"), by_index(loaders.train, "image")
    assert weak_alone.keys() == weak_with_strong.keys() == set(range(8))
    assert all(torch.equal(weak_alone[i], weak_with_strong[i]) for i in weak_alone)
    rebatched = build_loaders(DataConfig(**config | {"batch_size": 3}), CPU, seed=SEED, with_strong_view=True)
    strong, strong_rebatched = by_index(loaders.train, "image_strong"), by_index(rebatched.train, "image_strong")
    shared = strong.keys() & strong_rebatched.keys()
    assert len(shared) >= 5 and all(torch.equal(strong[i], strong_rebatched[i]) for i in shared)
