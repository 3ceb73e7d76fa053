"""`kdistill data check` on a tree of many tiny image files: the first check (every file decoded),
then the start after one file changed (only that file decoded), then one with nothing changed.

Builds root/train/<class>/ and root/val/<class>/ of 8x8 PNGs in a temporary folder (deleted at
the end), runs the real command for each check, and writes a JSON of what each printed (files,
decoded, bad, its own time: listing, stat pass, cached result, decodes) beside the process's wall
time (which adds Python's and torch's import) and the machine's load average.

    PYTHONPATH=src python benchmarks/folder_check.py --out benchmarks/results/folder_check_100k.json
"""

import argparse
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SUMMARY = re.compile(r": (\d+) image files checked, (\d+) decoded now \(new or changed\), (\d+) bad, ([\d.]+) s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="of the files, in val/")
    parser.add_argument("--out", default="benchmarks/results/folder_check_100k.json")
    return parser.parse_args()


def tiny_pngs(count: int) -> list[bytes]:
    """`count` distinct 8x8 PNGs, as bytes."""
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded


def write_tree(root: Path, files: int, classes: int, val_fraction: float) -> list[Path]:
    pngs = tiny_pngs(64)
    written = []
    per_class = {"train": round(files * (1 - val_fraction)) // classes, "val": round(files * val_fraction) // classes}
    for split, count in per_class.items():
        for label in range(classes):
            folder = root / split / f"class{label:04d}"
            folder.mkdir(parents=True)
            for index in range(count):
                path = folder / f"{index:06d}.png"
                path.write_bytes(pngs[index % len(pngs)])
                written.append(path)
    return written


def data_check(root: Path) -> dict:
    """One `kdistill data check ROOT` through the real entry point: what it printed, and its wall time."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kdistill.cli", "data", "check", str(root)],
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    summary = SUMMARY.search(result.stdout)
    if result.returncode != 0 or summary is None:
        raise SystemExit(f"kdistill data check failed ({result.returncode}): {result.stdout}{result.stderr}")
    files, decoded, bad, seconds = summary.groups()
    return {"files": int(files), "decoded": int(decoded), "bad": int(bad), "check_s": float(seconds),
            "process_wall_s": round(wall, 3), "load_average_1min": os.getloadavg()[0]}


def main() -> None:
    args = parse_args()
    folder = Path(tempfile.mkdtemp(prefix="kdistill-folder-check-"))
    try:
        start = time.perf_counter()
        written = write_tree(folder / "images", args.files, args.classes, args.val_fraction)
        build_s = time.perf_counter() - start
        first = data_check(folder / "images")
        changed = written[len(written) // 2]
        changed.write_bytes(tiny_pngs(65)[-1])  # other pixels, another size or modification time
        after_change = data_check(folder / "images")
        unchanged = data_check(folder / "images")
    finally:
        shutil.rmtree(folder)
    report = {
        "command": "kdistill data check ROOT (python -m kdistill.cli), 8x8 PNGs, "
                   f"{args.classes} classes, train/ and val/",
        "files": len(written), "tree_build_s": round(build_s, 1),
        "first_check": first, "after_one_file_changed": after_change, "nothing_changed": unchanged,
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "note": "shared 2-core machine, loaded by about 9 concurrent agents while measured: times are upper bounds",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
