"""Build the `embedded` data set: a class-balanced subset of Fashion-MNIST shipped in the package.

    PYTHONPATH=src python scripts/build_embedded.py [--root /usr/share/datasets/fashion-mnist]

Draws the same number of images per class from train and from test with a fixed seed, so
the file is reproducible from the full data set. It is an uncompressed .npz (uint8 images
[N, 28, 28], uint8 labels, and each image's index in the full split for provenance)
compressed with xz, which packs these images about 15% smaller than the npz's own deflate.
"""

import argparse
import io
import lzma
from pathlib import Path

import numpy as np

from kdistill.data.sources import DEBIAN_FASHION_MNIST, EMBEDDED_FILE, read_idx

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
SEED = 0
MAX_BYTES = 5 * 1024 * 1024
OUTPUT = Path(__file__).resolve().parents[1] / "src" / "kdistill" / "data" / "embedded" / EMBEDDED_FILE


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `per_class` samples of each class, drawn without replacement."""
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEBIAN_FASHION_MNIST, help="folder of the idx files")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, prefix, per_class in (("train", "train", TRAIN_PER_CLASS), ("test", "t10k", TEST_PER_CLASS)):
        images = read_idx(args.root / f"{prefix}-images-idx3-ubyte.gz", ndim=3)
        labels = read_idx(args.root / f"{prefix}-labels-idx1-ubyte.gz", ndim=1)
        chosen = balanced_subset(labels, per_class, rng)
        arrays[f"{split}_images"] = images[chosen]
        arrays[f"{split}_labels"] = labels[chosen]
        arrays[f"{split}_source_index"] = chosen.astype(np.uint16)  # Fashion-MNIST has < 65536 per split

    npz = io.BytesIO()
    np.savez(npz, **arrays)
    packed = lzma.compress(npz.getvalue(), preset=9 | lzma.PRESET_EXTREME)
    if len(packed) > MAX_BYTES:
        raise SystemExit(f"{len(packed)} bytes is over the {MAX_BYTES}-byte budget; lower the counts")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(packed)
    counts = {split: len(arrays[f"{split}_labels"]) for split in ("train", "test")}
    print(f"wrote {args.out}: {len(packed)} bytes, {counts}")


if __name__ == "__main__":
    main()
