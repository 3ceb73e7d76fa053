"""The check of a streamed data set's image files at the start of a run.

Every file is decoded once, in a pool of threads, so that a corrupt, truncated or empty image,
a dangling link or a link loop stops the run before training (data.bad_images=error) or is
left out (skip), instead of failing a DataLoader worker in the middle of an epoch. The result
is cached per state of the tree (the paths, sizes and modification times of its files), so a
later run over the same files only reads their metadata.
"""

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from kdistill.data.sources import ImageFiles, Source, Split
from kdistill.distributed import barrier
from kdistill.errors import KdistillError, first_line
from kdistill.files import WriteFailed, atomic_write_text

CACHE_FORMAT = 1  # bump when the check or the cache file changes
FILES_PER_TASK = 256  # files one thread checks per task: keeps the pool's queue short on huge trees
LARGE_TREE = 10_000  # files from which the check shows a progress bar
NAMED_FILES = 5  # bad files an error message names


def decode_error_reason(error: Exception, path: str) -> str:
    """A one-line reason for a failed decode, without the path the caller names anyway."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return first_line(error).replace(f" '{path}'", "")


def decode_problem(path: str) -> str | None:
    """Why the image at `path` cannot be decoded, or None when it can.

    JPEGs are decoded in draft mode (at 1/8 scale): every byte is still read, so truncation
    and corrupt data are found, at a fraction of the work of a full decode."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))
            image.load()
    except Exception as error:  # PIL raises many types for a bad file; all mean "undecodable"
        return decode_error_reason(error, path)
    return None


def _chunks(paths: list[str]) -> list[list[str]]:
    return [paths[start : start + FILES_PER_TASK] for start in range(0, len(paths), FILES_PER_TASK)]


def _in_threads(task: Callable[[list[str]], list], paths: list[str], desc: str) -> Iterable:
    """task(chunk) over chunks of `paths` in a thread pool (file I/O and PIL's decoders release
    the GIL), flattened in order; a progress bar on large trees."""
    with ThreadPoolExecutor() as pool, tqdm(
        total=len(paths), desc=desc, unit="file", leave=False, disable=len(paths) < LARGE_TREE or None
    ) as bar:
        for chunk, results in zip(_chunks(paths), pool.map(task, _chunks(paths)), strict=True):
            bar.update(len(chunk))
            yield from results


def _stat_lines(paths: list[str]) -> list[str]:
    lines = []
    for path in paths:
        try:
            stat = os.stat(path)
            lines.append(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n")
        except OSError:  # dangling or looping link: its name alone keys it
            lines.append(f"{path}\t-\n")
    return lines


def tree_key(paths: list[str]) -> str:
    """A digest of the files' paths, sizes and modification times."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}\n".encode())
    for line in _in_threads(_stat_lines, paths, "listing images"):
        digest.update(line.encode())
    return digest.hexdigest()


def _read_cache(cache_file: Path, key: str) -> dict[str, str] | None:
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):  # absent, unreadable or torn: check again
        return None
    return cached["bad"] if isinstance(cached, dict) and cached.get("tree") == key else None


def _write_cache(cache_file: Path, key: str, bad: dict[str, str]) -> None:
    # Atomic: readers see the old file or the whole new one. In a read-only data folder the
    # check still works, it is just not kept.
    with contextlib.suppress(WriteFailed):
        atomic_write_text(cache_file, json.dumps({"tree": key, "bad": bad}))


def find_bad_images(paths: list[str], cache_file: Path | None, key: str) -> dict[str, str]:
    """{path: reason} of the files among `paths` (whose `tree_key` is `key`) that cannot be decoded."""
    bad = _read_cache(cache_file, key) if cache_file is not None else None
    if bad is None:
        problems = list(_in_threads(lambda chunk: [decode_problem(path) for path in chunk], paths, "checking images"))
        bad = {path: problem for path, problem in zip(paths, problems, strict=True) if problem is not None}
        if cache_file is not None:
            _write_cache(cache_file, key, bad)
    return bad


def _without(split: Split, bad: dict[str, str]) -> Split:
    if not isinstance(split, ImageFiles):
        return split
    return split.subset(torch.tensor([i for i, path in enumerate(split.paths) if path not in bad], dtype=torch.int64))


def _named(bad: dict[str, str]) -> str:
    named = "; ".join(f"{path} ({reason})" for path, reason in list(bad.items())[:NAMED_FILES])
    return named + (f"; +{len(bad) - NAMED_FILES} more" if len(bad) > NAMED_FILES else "")


def checked_source(source: Source, name: str, policy: str, cache_file: Path | None, rank: int = 0) -> Source:
    """`source` with its undecodable image files reported (policy "error": a KdistillError) or
    left out ("skip"), and the tree's state (`tree_key`) recorded in it. In-memory splits pass
    unchanged. Rank 0 checks first and the other
    ranks then read its cache instead of decoding every file again."""
    paths = [path for split in (source.train, source.test) if isinstance(split, ImageFiles) for path in split.paths]
    if not paths:
        return source
    if rank != 0:
        barrier()
    try:
        key = tree_key(paths)
        bad = find_bad_images(paths, cache_file, key)
    finally:
        if rank == 0:
            barrier()
    source = replace(source, tree_state=key)
    if not bad:
        return source
    if policy == "error":
        raise KdistillError(
            f"dataset '{name}': {len(bad)} of {len(paths)} image files cannot be decoded: {_named(bad)}; "
            "replace or delete them, or set data.bad_images=skip to leave them out"
        )
    if rank == 0:
        print(f"kdistill: data: left out {len(bad)} of {len(paths)} image files that cannot be decoded "
              f"(data.bad_images=skip): {_named(bad)}", file=sys.stderr)
    return replace(source, train=_without(source.train, bad), test=_without(source.test, bad))
