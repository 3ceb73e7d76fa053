"""The check of a streamed data set's image files before a run, and the state of their tree.

Every file is decoded once, in a pool of threads, so that a corrupt, truncated or empty image,
a dangling link or a link loop stops the run before training (data.bad_images=error) or is
left out (skip), instead of failing a DataLoader worker in the middle of an epoch. The result
is kept with each file's size and modification time, so a later check (the next run's start,
or `kdistill data check`) only reads the files' metadata and decodes the files that are new or
changed since. The tree's state (a digest of its paths, sizes and modification times) names the
data in the teacher cache's identity.
"""

import contextlib
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from kdistill.data.sources import ImageFiles, Source, Split
from kdistill.distributed import barrier
from kdistill.errors import KdistillError, first_line
from kdistill.files import WriteFailed, atomic_write_text

# In the tree state's digest: kept, so that teacher caches filled before keep their identity.
TREE_STATE_FORMAT = 1
CACHE_FORMAT = 2  # the check's result file; bump when it or the check changes
FILES_PER_TASK = 256  # files one thread stats or decodes per task: keeps the pool's queue short on huge trees
STAT_THREADS = 32  # threads of the metadata pass (see `state_lines`)
LARGE_TREE = 10_000  # files from which the check shows a progress bar
NAMED_FILES = 5  # bad files an error message names

FileState = tuple[int, int] | None  # (size, modification time in ns); None: no such file (a dangling link)


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


def _in_threads(task: Callable[[list[str]], list], paths: list[str], desc: str, threads: int | None) -> list:
    """task(chunk) over chunks of `paths` in a pool of `threads` (file I/O and PIL's decoders
    release the GIL), flattened in order; a progress bar on large trees."""
    chunks = [paths[start : start + FILES_PER_TASK] for start in range(0, len(paths), FILES_PER_TASK)]
    results = []
    with ThreadPoolExecutor(threads) as pool, tqdm(total=len(paths), desc=desc, unit="file", leave=False,
                                                   disable=len(paths) < LARGE_TREE or None) as bar:
        for chunk, chunk_results in zip(chunks, pool.map(task, chunks), strict=True):
            bar.update(len(chunk))
            results += chunk_results
    return results


def _stat_states(paths: list[str]) -> list[FileState]:
    states = []
    for path in paths:
        try:
            stat = os.stat(path)  # follows links
            states.append((stat.st_size, stat.st_mtime_ns))
        except OSError:  # missing, a dangling or looping link: the decode reports it
            states.append(None)
    return states


def state_lines(paths: list[str]) -> list[str]:
    """'path<TAB>size<TAB>mtime_ns' ('path<TAB>-' when it cannot be stat'ed) of each of `paths`.

    The stat pass runs in threads (it waits on the file system, a network one above all, not on
    the CPU): on this machine's local disk 100k files take 0.7 s, and a listing of each folder
    first (os.scandir) made it twice as slow. The reader listed the folders just before, so a
    network file system's attribute cache is warm already."""
    states = _in_threads(_stat_states, paths, "listing images", STAT_THREADS)
    return [f"{path}\t-" if state is None else f"{path}\t{state[0]}\t{state[1]}"
            for path, state in zip(paths, states, strict=True)]


def tree_state(lines: list[str]) -> str:
    """A digest of the files' paths, sizes and modification times (their `state_lines`)."""
    text = f"format {TREE_STATE_FORMAT}\n" + "".join(f"{line}\n" for line in lines)
    return hashlib.sha256(text.encode()).hexdigest()


def stat_tree_state(paths: list[str]) -> str:
    """The tree state of `paths`, from their metadata alone (no file is decoded)."""
    return tree_state(state_lines(paths))


@dataclass(frozen=True)
class CachedCheck:
    """A previous check's result: the state line of each file it decoded, the bad ones' reasons."""

    tree: str
    lines: list[str]
    bad: dict[str, str]


def _read_cache(cache_file: Path) -> CachedCheck | None:
    try:
        cached = json.loads(cache_file.read_text())
        lines, bad = cached["files"], cached["bad"]
        if cached["format"] != CACHE_FORMAT or not isinstance(lines, list) or not isinstance(bad, dict):
            return None
        return CachedCheck(str(cached["tree"]), lines, bad)
    except (OSError, ValueError, TypeError, KeyError):  # absent, torn or foreign
        return None


def _write_cache(cache_file: Path, check: CachedCheck) -> None:
    # Atomic: readers see the old file or the whole new one. In a read-only data folder the
    # check still works, it is just not kept.
    with contextlib.suppress(WriteFailed):
        atomic_write_text(cache_file, json.dumps({"format": CACHE_FORMAT, "tree": check.tree,
                                                  "files": check.lines, "bad": check.bad}))


@dataclass(frozen=True)
class ImageCheck:
    """What a check found: the files it covered, how many it decoded now (the others were
    unchanged since the cached check), the undecodable ones {path: reason}, the tree state."""

    files: int
    decoded: int
    bad: dict[str, str]
    tree_state: str


def check_images(paths: list[str], cache_file: Path | None) -> ImageCheck:
    """Decode each file of `paths` that is new or changed (by size and modification time) since
    the check kept in `cache_file`, and keep the result there."""
    lines = state_lines(paths)
    tree = tree_state(lines)
    cached = _read_cache(cache_file) if cache_file is not None else None
    if cached is not None and cached.tree == tree:  # this tree state was checked: nothing to compare
        return ImageCheck(len(paths), 0, cached.bad, tree)
    checked = set(cached.lines) if cached is not None else set()
    changed = list(dict.fromkeys(path for path, line in zip(paths, lines, strict=True) if line not in checked))
    problems = dict(zip(changed, _in_threads(lambda chunk: [decode_problem(path) for path in chunk], changed,
                                             "checking images", threads=None), strict=True))
    known_bad = cached.bad if cached is not None else {}
    # In the tree's order: each file's reason from this decode, or else from the cached one.
    reasons = {path: problems[path] if path in problems else known_bad.get(path) for path in paths}
    bad = {path: str(reason) for path, reason in reasons.items() if reason is not None}
    if cache_file is not None:
        _write_cache(cache_file, CachedCheck(tree, lines, bad))
    return ImageCheck(len(paths), len(changed), bad, tree)


def image_paths(source: Source) -> list[str]:
    """The image files of both splits of `source` (none for an in-memory set)."""
    return [path for split in (source.train, source.test) if isinstance(split, ImageFiles) for path in split.paths]


def _without(split: Split, bad: dict[str, str]) -> Split:
    if not isinstance(split, ImageFiles):
        return split
    return split.subset(torch.tensor([i for i, path in enumerate(split.paths) if path not in bad], dtype=torch.int64))


def _checked(split: Split) -> Split:
    return replace(split, checked=True) if isinstance(split, ImageFiles) else split


def named_files(bad: dict[str, str]) -> str:
    """'path (reason); ...' of the first NAMED_FILES bad files, and how many more."""
    shown = list(bad.items())[:NAMED_FILES]
    named = "; ".join(f"{path} ({reason})" for path, reason in shown)
    return named + (f"; +{len(bad) - len(shown)} more" if len(bad) > len(shown) else "")


def checked_source(source: Source, name: str, policy: str, cache_file: Path | None, rank: int = 0,
                   check: bool = True) -> Source:
    """`source` with its undecodable image files reported (policy "error": a KdistillError) or
    left out ("skip"), and the tree's state recorded in it. In-memory splits pass unchanged.
    Rank 0 checks first and the other ranks then read its cache instead of decoding every file
    again. `check=False` (data.check_images=false, a trusted tree) decodes nothing and stats
    nothing: the tree state is computed from the files' metadata only if something asks for it."""
    paths = image_paths(source)
    if not paths:
        return source
    if not check:
        return replace(source, tree_state_of=functools.cache(lambda: stat_tree_state(paths)))
    if rank != 0:
        barrier()
    try:
        result = check_images(paths, cache_file)
    finally:
        if rank == 0:
            barrier()
    source = replace(source, train=_checked(source.train), test=_checked(source.test),
                     tree_state_of=lambda: result.tree_state)
    bad = result.bad
    if not bad:
        return source
    if policy == "error":
        raise KdistillError(
            f"dataset '{name}': {len(bad)} of {len(paths)} image files cannot be decoded: {named_files(bad)}; "
            "replace or delete them, or set data.bad_images=skip to leave them out"
        )
    if rank == 0:
        print(f"kdistill: data: left out {len(bad)} of {len(paths)} image files that cannot be decoded "
              f"(data.bad_images=skip): {named_files(bad)}", file=sys.stderr)
    return replace(source, train=_without(source.train, bad), test=_without(source.test, bad))

