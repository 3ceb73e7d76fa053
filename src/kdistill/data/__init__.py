"""Data sets, keyed augmentation and the device loaders (`build_loaders`)."""

from kdistill.data.augment import (
    Stream,
    crop_flip,
    crop_flip_params,
    keyed_bits,
    keyed_flip,
    keyed_randint,
    keyed_uniform,
    resized_crop_params,
)
from kdistill.data.batch import Batch
from kdistill.data.loaders import DatasetInfo, Loader, Loaders, build_loaders, list_datasets
from kdistill.data.sources import DATASETS

__all__ = [
    "DATASETS",
    "Batch",
    "DatasetInfo",
    "Loader",
    "Loaders",
    "Stream",
    "build_loaders",
    "crop_flip",
    "crop_flip_params",
    "keyed_bits",
    "keyed_flip",
    "keyed_randint",
    "keyed_uniform",
    "list_datasets",
    "resized_crop_params",
]
