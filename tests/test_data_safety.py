"""Data files that are hostile or damaged: a CIFAR pickle that carries code, image folders with
undecodable files, links that dangle or loop, and a file that changes after the check at start.
Each is met with one line and exit code 2 before training, or (data.bad_images=skip) left out."""

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUICK_RUN, RunsCommand, assert_user_error, run_kdistill
from PIL import Image

from kdistill.config import DataConfig
from kdistill.data import build_loaders, image_check
from kdistill.data.loaders import image_check_cache
from kdistill.data.sources import DATASETS
from kdistill.errors import KdistillError

CPU = torch.device("cpu")
RUN = [*QUICK_RUN, "epochs=1", "steps_per_epoch=2", "data.batch_size=4", "data.eval_batch_size=4"]
# cosine: a short run under the step schedule adds a warning line to stderr, which these tests read
FOLDER_RUN = [*RUN, "data.name=imagefolder", "data.image_size=16", "data.num_workers=0", "schedule.name=cosine"]


# --- CIFAR pickles -------------------------------------------------------------------------


def cifar_entry(rng: np.random.Generator, count: int) -> dict:
    return {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, count).tolist()}


def python2_str(raw: bytes) -> bytes:
    """A Python 2 `str` as cPickle wrote it (SHORT_BINSTRING / BINSTRING)."""
    return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw


def python2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)


def python2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The bytes of a CIFAR batch as the data set ships it: a Python 2 protocol-2 pickle of
    {'data': uint8 array, 'labels': list}, its array rebuilt by numpy.core.multiarray._reconstruct."""
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + python2_int(0) + b"\x85" + python2_str(b"b")
        + b"\x87R(" + python2_int(1) + python2_int(data.shape[0]) + python2_int(data.shape[1]) + b"\x86"
        + b"cnumpy\ndtype\n" + python2_str(b"u1") + python2_int(0) + python2_int(1) + b"\x87R"
        + b"(" + python2_int(3) + python2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + python2_int(0) + b"tb"
        + b"\x89" + python2_str(data.tobytes()) + b"tb"
    )
    label_list = b"](" + b"".join(python2_int(label) for label in labels) + b"e"
    return b"\x80\x02}(" + python2_str(b"data") + array + python2_str(b"labels") + label_list + b"u."


def write_cifar10(root: Path, first_batch: bytes | None = None) -> tuple[Path, dict[str, dict]]:
    """cifar-10-batches-py with small batches; `first_batch` replaces data_batch_1's bytes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = {name: cifar_entry(rng, 8) for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    for name, entry in entries.items():
        (folder / name).write_bytes(pickle.dumps(entry))
    if first_batch is not None:
        (folder / "data_batch_1").write_bytes(first_batch)
    return folder, entries


def test_a_cifar_pickle_that_carries_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code-ran"
    hostile = pickle.dumps({**cifar_entry(np.random.default_rng(1), 8), "extra": RunsCommand(f"touch {marker}")},
                           protocol=2)
    folder, _ = write_cifar10(tmp_path / "cifar", first_batch=hostile)
    out = tmp_path / "run"
    result = run_kdistill("train", *RUN, "data.name=cifar10", f"data.root={tmp_path / 'cifar'}", f"out={out}")
    assert_user_error(result, f"{folder / 'data_batch_1'} asks to call {os.system.__module__}.system",
                      "nothing of it ran")
    assert not marker.exists() and not out.exists()


def test_cifar_batches_in_the_shipped_python2_format_and_in_python3_pickles_still_load(tmp_path):
    rng = np.random.default_rng(2)
    data, labels = rng.integers(0, 256, (3, 3072), dtype=np.uint8), [7, 0, 9]
    shipped = python2_cifar_batch(data, labels)
    assert pickle.loads(shipped, encoding="latin1")["labels"] == labels  # the hand-written bytes are a real pickle
    folder, entries = write_cifar10(tmp_path, first_batch=shipped)
    (folder / "data_batch_2").write_bytes(pickle.dumps(entries["data_batch_2"], protocol=2))  # numpy 2 + _codecs
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    source = DATASETS.get("cifar10")(str(tmp_path), False)
    expected = np.concatenate([data] + [entries[f"data_batch_{i}"]["data"] for i in range(2, 6)])
    assert torch.equal(source.train.images, torch.from_numpy(expected.reshape(-1, 3, 32, 32)))
    assert source.train.labels[:3].tolist() == labels and source.class_names[9] == "c9"
    assert torch.equal(source.test.images.flatten(1), torch.from_numpy(entries["test_batch"]["data"]))


def test_a_damaged_cifar_pickle_names_the_file(tmp_path):
    folder, _ = write_cifar10(tmp_path, first_batch=pickle.dumps(cifar_entry(np.random.default_rng(3), 8))[:100])
    with pytest.raises(KdistillError, match=f"{folder / 'data_batch_1'} is not a readable pickle"):
        DATASETS.get("cifar10")(str(tmp_path), False)
    (folder / "data_batch_1").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(KdistillError, match="holds a list, not the dict of a CIFAR file"):
        DATASETS.get("cifar10")(str(tmp_path), False)


# --- image folders -------------------------------------------------------------------------

CLASSES = ("cat", "dog")
PER_CLASS = {"train": 6, "val": 2}


def write_image(path: Path, seed: int, fmt: str = "JPEG") -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def write_image_folder(root: Path) -> Path:
    """train/ and val/ with two classes of 16x16 JPEGs."""
    for split, count in PER_CLASS.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                write_image(root / split / name / f"{k}.jpg", seed=100 * label + k)
    return root


def spoil(path: Path, kind: str) -> None:
    """Turn the image at `path` into one of the bad files users meet."""
    if kind == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG" * 20)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "dangling link":
        path.unlink()
        path.symlink_to(path.parent / "deleted.jpg")
    elif kind == "link loop":
        path.unlink()
        path.symlink_to(path.name)


BAD_KINDS = ["corrupt", "truncated", "empty", "dangling link", "link loop"]


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_bad_image_stops_the_run_at_start_naming_the_file(tmp_path, kind, split):
    root = write_image_folder(tmp_path / "images")
    bad = root / split / "dog" / "1.jpg"
    spoil(bad, kind)
    out = tmp_path / "run"
    result = run_kdistill("train", *FOLDER_RUN, f"data.root={root}", f"out={out}")
    assert_user_error(result, f"1 of 16 image files cannot be decoded: {bad} (", "data.bad_images=skip")
    assert not out.exists()  # stopped before the run folder was made, let alone an epoch


def test_skip_leaves_the_bad_images_out_and_says_how_many(tmp_path):
    root = write_image_folder(tmp_path / "images")
    bad = [root / "train" / "cat" / "0.jpg", root / "train" / "dog" / "5.jpg", root / "val" / "dog" / "0.jpg"]
    for path, kind in zip(bad, ["corrupt", "dangling link", "empty"], strict=True):
        spoil(path, kind)
    out = tmp_path / "run"
    result = run_kdistill("train", *FOLDER_RUN, "data.bad_images=skip", "data.num_workers=2", f"data.root={root}",
                          f"out={out}")
    assert result.returncode == 0, result.stderr
    assert "left out 3 of 16 image files that cannot be decoded (data.bad_images=skip)" in result.stderr
    assert (out / "results.json").is_file()

    cfg = DataConfig("imagefolder", str(root), batch_size=2, bad_images="skip", num_workers=0)
    loaders = build_loaders(cfg, CPU, 0)
    assert loaders.info.train_size == 10 and loaders.test.labels.tolist() == [0, 0, 1]
    kept = set(loaders.train.dataset.files.paths) | set(loaders.test.dataset.files.paths)
    assert not kept & {str(path) for path in bad} and len(kept) == 13


def test_a_directory_symlink_loop_is_not_followed(tmp_path):
    root = write_image_folder(tmp_path / "images")
    outside = tmp_path / "more_cats"
    outside.mkdir()
    write_image(outside / "extra.png", seed=7, fmt="PNG")
    (root / "train" / "cat" / "loop").symlink_to("..")  # back to train/: every class again, under "cat"
    (root / "train" / "cat" / "top").symlink_to(root)  # the data root
    (root / "train" / "dog" / "cats").symlink_to(root / "train" / "cat")  # another class's folder
    (root / "train" / "cat" / "more").symlink_to(outside)  # a real folder elsewhere: followed
    source = DATASETS.get("imagefolder")(str(root), False)
    assert source.train.labels.tolist() == [0] * 7 + [1] * 6
    assert source.train.paths[6] == str(root / "train" / "cat" / "more" / "extra.png")
    result = run_kdistill("train", *FOLDER_RUN, f"data.root={root}", f"out={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr


def change_keeping_size_and_time(path: Path) -> None:
    """Overwrite `path` with zeros of the same size and restore its modification time: to the
    cached check, the file looks unchanged."""
    stat = path.stat()
    path.write_bytes(bytes(stat.st_size))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize(("split", "workers"), [("train", 2), ("val", 0)])
def test_an_image_that_changes_after_the_check_fails_in_one_line(tmp_path, split, workers):
    root = write_image_folder(tmp_path / "images")
    build_loaders(DataConfig("imagefolder", str(root), batch_size=2), CPU, 0)  # checks every file and caches the result
    changed = root / split / "cat" / "1.jpg"
    change_keeping_size_and_time(changed)
    out = tmp_path / "run"
    steps = ["steps_per_epoch=null", "data.batch_size=2"]  # every train image is read
    result = run_kdistill("train", *FOLDER_RUN, *steps, f"data.num_workers={workers}", f"data.root={root}",
                          f"out={out}")
    assert_user_error(result, f"kdistill: error: image {changed} cannot be decoded (cannot identify image file) "
                      "although the check at start could: it changed since; restore or delete it, then run again "
                      "(a training run continues with --resume)")


def test_the_check_decodes_each_file_once_until_the_tree_changes(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "images")
    decoded = []
    real_check = image_check.decode_problem
    monkeypatch.setattr(image_check, "decode_problem", lambda path: decoded.append(path) or real_check(path))
    cfg = DataConfig("imagefolder", str(root), batch_size=2)
    build_loaders(cfg, CPU, 0)
    assert len(decoded) == 16 and image_check_cache(cfg).parent == root / ".kdistill-cache"
    build_loaders(cfg, CPU, 0)
    assert len(decoded) == 16  # the cached result
    spoil(root / "val" / "cat" / "0.jpg", "truncated")  # a new size
    with pytest.raises(KdistillError, match="1 of 16 image files cannot be decoded"):
        build_loaders(cfg, CPU, 0)
    assert decoded[16:] == [str(root / "val" / "cat" / "0.jpg")]  # only the changed file
    elsewhere = DataConfig("imagefolder", str(root), batch_size=2, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(KdistillError, match="1 of 16 image files cannot be decoded"):
        build_loaders(elsewhere, CPU, 0)
    assert image_check_cache(elsewhere).is_file()


def test_a_bad_tiny_imagenet_validation_image_is_found_at_start(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("n01\nn02\n")
    for label, wnid in enumerate(["n01", "n02"]):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        write_image(folder / "train" / wnid / "images" / f"{wnid}_0.JPEG", seed=label)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\nval_1.JPEG\tn02\n")
    write_image(folder / "val" / "images" / "val_0.JPEG", seed=5)  # val_1.JPEG is listed but missing
    with pytest.raises(KdistillError, match=f"1 of 4 image files cannot be decoded: {folder}/val/images/val_1.JPEG "
                                            r"\(No such file or directory\)"):
        build_loaders(DataConfig("tiny-imagenet", str(tmp_path), batch_size=1), CPU, 0)


def test_an_unknown_bad_images_policy_is_refused():
    with pytest.raises(KdistillError, match="data.bad_images='ignore' is not one of: error, skip"):
        DataConfig(bad_images="ignore")


# --- the check ahead of time (`kdistill data check`), incremental, or skipped ---------------


def check_summary(result) -> str:
    """The summary line of `kdistill data check` up to its time."""
    return result.stdout.splitlines()[0].split(" bad, ")[0] + " bad"


def test_data_check_decodes_only_what_changed_and_serves_the_run(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "images")
    first = run_kdistill("data", "check", str(root))
    assert first.returncode == 0, first.stderr
    assert check_summary(first) == f"imagefolder {root}: 16 image files checked, 16 decoded now (new or changed), 0 bad"
    assert check_summary(run_kdistill("data", "check", str(root))).endswith("16 image files checked, 0 decoded now "
                                                                             "(new or changed), 0 bad")
    changed = root / "train" / "dog" / "3.jpg"
    write_image(changed, seed=99)  # other pixels: another size or modification time
    second = run_kdistill("data", "check", str(root))
    assert second.returncode == 0 and "16 image files checked, 1 decoded now (new or changed), 0 bad" in second.stdout

    decoded = []  # the run's start finds the tree checked: it decodes nothing
    real_check = image_check.decode_problem
    monkeypatch.setattr(image_check, "decode_problem", lambda path: decoded.append(path) or real_check(path))
    build_loaders(DataConfig("imagefolder", str(root), batch_size=2), CPU, 0)
    assert decoded == []


def test_data_check_names_each_bad_file_and_exits_1(tmp_path):
    root = write_image_folder(tmp_path / "images")
    cache = tmp_path / "check-cache"
    assert run_kdistill("data", "check", str(root), f"data.cache_dir={cache}").returncode == 0
    bad = [root / "train" / "cat" / "2.jpg", root / "val" / "dog" / "1.jpg"]
    spoil(bad[0], "corrupt")
    spoil(bad[1], "dangling link")
    result = run_kdistill("data", "check", str(root), f"data.cache_dir={cache}")
    assert result.returncode == 1, result.stderr
    assert "16 image files checked, 2 decoded now (new or changed), 2 bad" in result.stdout
    assert f"  bad: {bad[0]} (" in result.stdout
    assert f"  bad: {bad[1]} (No such file or directory)" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"2 of 16 image files cannot be decoded: {bad[0]} (" in lines[0], result.stderr
    assert not (root / ".kdistill-cache").exists() and len(list(cache.iterdir())) == 1  # kept in data.cache_dir


def test_data_check_of_an_in_memory_set_is_one_line(tmp_path):
    assert_user_error(run_kdistill("data", "check", str(tmp_path), "data.name=embedded"),
                      "data set 'embedded' is read into memory, it has no image files to check")


def test_check_images_false_skips_the_check_and_a_bad_file_read_in_training_is_one_line(tmp_path):
    root = write_image_folder(tmp_path / "images")
    bad = root / "val" / "cat" / "1.jpg"
    spoil(bad, "truncated")
    result = run_kdistill("train", *FOLDER_RUN, "data.check_images=false", f"data.root={root}",
                          f"out={tmp_path / 'run'}")
    assert_user_error(result, f"kdistill: error: image {bad} cannot be decoded (",
                      "data.check_images=false skipped the check at start", "kdistill data check")
    assert not (root / ".kdistill-cache").exists()  # no check ran, so none was kept


def test_the_tree_state_changes_with_a_file_whether_or_not_the_images_are_checked(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "images")
    decoded = []
    real_check = image_check.decode_problem
    monkeypatch.setattr(image_check, "decode_problem", lambda path: decoded.append(path) or real_check(path))

    def tree_state(check_images: bool) -> str:
        return build_loaders(DataConfig("imagefolder", str(root), batch_size=2, check_images=check_images),
                             CPU, 0).info.tree_state

    before = tree_state(check_images=False)
    assert decoded == [] and before == tree_state(check_images=True)  # one identity for the teacher cache
    write_image(root / "val" / "dog" / "0.jpg", seed=42)
    after = tree_state(check_images=False)
    assert after != before and after == tree_state(check_images=True)
