"""The keyed DeiT-style train view (timm's transforms, seeded per sample) and repeated augmentation."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdistill.config import DataConfig
from kdistill.data import build_loaders
from kdistill.data.deit import DeitFileDataset, deit_transform, seeded_global_generators
from kdistill.data.loaders import BatchOrder
from kdistill.data.sources import DATASETS
from kdistill.errors import KdistillError

CPU = torch.device("cpu")
SEED = 3
SIDE = 40  # above 32 px: the random-resized crop path, as at 224 px


def write_folder(root: Path, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{k}.png")


def deit_config(root: Path, **overrides) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), image_size=SIDE, train_transform="deit",
                      interpolation="bicubic", **overrides)


def views_by_index(loader, epoch: int) -> dict[int, torch.Tensor]:
    loader.set_epoch(epoch)
    return {int(i): image for batch in loader for i, image in zip(batch["index"], batch["image"])}


def test_the_same_key_gives_the_same_view_whatever_the_workers_and_batch_size(tmp_path):
    write_folder(tmp_path)
    runs = [views_by_index(build_loaders(deit_config(tmp_path, batch_size=b, num_workers=w), CPU, SEED).train, 1)
            for b, w in ((4, 0), (3, 2), (6, 1))]
    common = set(runs[0]) & set(runs[1]) & set(runs[2])
    assert len(common) >= 6
    for index in common:
        assert torch.equal(runs[0][index], runs[1][index]) and torch.equal(runs[0][index], runs[2][index])
    images = list(runs[0].values())
    assert images[0].dtype == torch.float32 and images[0].shape == (3, SIDE, SIDE)
    assert all(not torch.equal(images[0], other) for other in images[1:])  # different indices differ
    next_epoch = views_by_index(build_loaders(deit_config(tmp_path, batch_size=4, num_workers=0), CPU, SEED).train, 2)
    assert all(not torch.equal(runs[0][i], next_epoch[i]) for i in set(runs[0]) & set(next_epoch))


def test_views_leave_the_global_generators_as_they_were(tmp_path):
    write_folder(tmp_path)
    source = DATASETS.get("imagefolder")(str(tmp_path), False)
    dataset = DeitFileDataset(source.train, deit_transform(deit_config(tmp_path), SIDE, source.mean, source.std), SEED)
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    first = dataset[(2, 0)][0]
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert torch.equal(first, dataset[(2, 0)][0])
    assert not torch.equal(first, dataset[(2 + len(dataset), 0)][0])  # a repeat of the sample: its own view
    assert dataset[(2 + len(dataset), 0)][2] == 2


def binomial_bounds(trials: int, p: float, sigmas: float = 4.0) -> tuple[float, float]:
    spread = sigmas * math.sqrt(trials * p * (1 - p))
    return trials * p - spread, trials * p + spread


def test_random_erasing_and_rand_augment_run_at_their_rates_over_1000_samples(tmp_path):
    write_folder(tmp_path, per_class=1)
    source = DATASETS.get("imagefolder")(str(tmp_path), False)
    transform = deit_transform(deit_config(tmp_path), SIDE, source.mean, source.std)
    erasing = transform.transforms[-1]
    rand_augment = next(t for t in transform.transforms if type(t).__name__ == "RandAugment")
    counts = {"erased": 0, "ops": 0}

    def counted_erase(original):
        def erase(image, *args):
            before = image.clone()
            original(image, *args)
            counts["erased"] += not torch.equal(before, image)
        return erase

    def counted_op(original):
        def op(*args, **kwargs):
            counts["ops"] += 1
            return original(*args, **kwargs)
        return op

    erasing._erase = counted_erase(erasing._erase)
    for op in rand_augment.ops:
        op.aug_fn = counted_op(op.aug_fn)
    dataset = DeitFileDataset(source.train, transform, SEED)
    samples = 1000
    for view in range(samples):
        dataset[(view, 0)]
    low, high = binomial_bounds(samples, 0.25)  # DeiT's reprob
    assert low <= counts["erased"] <= high
    low, high = binomial_bounds(2 * samples, 0.5)  # two operations, each applied with probability 1/2
    assert low <= counts["ops"] <= high


@pytest.mark.parametrize("size, world", [(1000, 1), (1000, 4), (300, 3), (100, 2)])
def test_repeated_augmentation_follows_timms_sampler(size, world):
    from timm.data.distributed_sampler import RepeatAugSampler

    orders = [BatchOrder(size, 1, SEED, rank, world, train=True, repeats=3) for rank in range(world)]
    timm_sampler = RepeatAugSampler(range(size), num_replicas=world, rank=0, num_repeats=3)
    assert orders[0].per_rank() == len(timm_sampler)
    views = [torch.cat(order.batches(0)) for order in orders]
    assert all(len(v) == len(timm_sampler) for v in views)
    indices = [v % size for v in views]
    # The repeats of a sample are consecutive entries dealt round-robin: on different ranks ...
    if world == 3:
        assert all(torch.equal(indices[0], other) for other in indices[1:])
    # ... each with its own view id (index + repeat * size).
    every_view = torch.cat(views)
    assert every_view.unique().numel() == every_view.numel() or world == 1 and size < 256
    assert ((every_view // size) < 3).all()


def test_deit_options_are_checked(tmp_path):
    write_folder(tmp_path)
    with pytest.raises(KdistillError, match="repeated_augment"):
        build_loaders(DataConfig(name="imagefolder", root=str(tmp_path), repeated_augment=3), CPU, 0)
    with pytest.raises(KdistillError, match="data.train_transform='heavy' is not one of: standard, deit"):
        DataConfig(name="imagefolder", root=str(tmp_path), train_transform="heavy")
    with pytest.raises(KdistillError, match="image folders"):
        build_loaders(DataConfig(name="embedded", train_transform="deit"), CPU, 0)


def test_seeded_global_generators_repeat_their_draws():
    with seeded_global_generators(5):
        first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    with seeded_global_generators(5):
        assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_posterize_to_zero_bits_gives_black_as_the_reference_did():
    from timm.data.auto_augment import rand_augment_transform

    from kdistill.data.deit import _posterize_keeping_zero_bits

    image = Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8))
    assert np.array(_posterize_keeping_zero_bits(image, 0)).max() == 0
    assert np.array(_posterize_keeping_zero_bits(image, 1)).max() == 128
    ops = rand_augment_transform("rand-m9-mstd0.5-inc1", {}).ops
    assert any(op.name == "PosterizeIncreasing" for op in ops)  # the op that draws 0 bits at magnitude 10
