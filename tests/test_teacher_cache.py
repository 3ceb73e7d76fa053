import dataclasses
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import kdistill_command, run_kdistill
from PIL import Image

from kdistill.config import DataConfig
from kdistill.config.loading import load_config
from kdistill.engine import fill_teacher_cache, train_run
from kdistill.engine.teacher_cache import MANIFEST_FILE, TEACHER_NEUTRAL_KEYS, TopKRows, cache_identity
from kdistill.errors import KdistillError
from kdistill.losses import kd_loss
from kdistill.methods import method_class
from kdistill.models import create_model
from kdistill.models.checkpoint import save_model_weights
from kdistill.models.wrn import WideResNet

TEACHER = "wrn_16_1"  # a class of its own (the student is a CIFAR ResNet): its forwards can be counted
TRAIN_PER_CLASS, CLASSES = 24, 4  # 96 training images, 3 batches of 32 per epoch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny image folder (4 classes, 16 x 16) and two different random teachers."""
    root = tmp_path_factory.mktemp("cache_data")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", 4)):
        for label in range(CLASSES):
            folder = root / "images" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    teachers = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = root / f"teacher{seed}.pth"
        save_model_weights(create_model(TEACHER, num_classes=CLASSES), path)
        teachers.append(path)
    return root, teachers


def run_args(setup, method: str, out, *extra: str) -> list[str]:
    root, teachers = setup
    return ["student=resnet8", f"teacher={TEACHER}", f"teacher_checkpoint={teachers[0]}", f"method.name={method}",
            "data.name=imagefolder", f"data.root={root / 'images'}", "data.image_size=16", "data.batch_size=32",
            "data.num_workers=0", "epochs=2", "progress=false", "tensorboard=false", "device=cpu", f"out={out}",
            *extra]


METHOD_OPTIONS = {
    "kd": [], "dcd+kd": [], "crd": ["method.num_negatives=32"],
    # Thresholds 0: every sample passes CRLD's confidence gates, so the teacher's values all count.
    "crld": ["method.weak_threshold=0.0", "method.strong_threshold=0.0"],
    "dkd": ["method.warmup=1"],
    "mlkd": [],  # two views, read through the cache like CRLD's
    "dist": [],
    "srrl": [],  # its teacher's classifier is applied to the student's features: the weights, not a cached output
    "kd+ctkd": ["method.instance_temperature=true"],  # the temperature MLP reads the cached teacher logits too
    "rrd+kd": ["method.queue_size=64"],
    "deit": ["student=timm:deit_tiny_distilled_patch16_224", "student_options.img_size=16", "student_options.depth=1",
             "student_options.patch_size=4", "student_options.embed_dim=32", "student_options.num_heads=2"],
}


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_a_run_reading_an_fp32_cache_ends_with_the_weights_of_a_run_computing_the_teacher(setup, tmp_path, method):
    options = METHOD_OPTIONS[method]
    cache = [f"teacher_cache={tmp_path / 'cache'}", "teacher_cache_dtype=float32"]
    weights = {}
    for name, extra in (("teacher", []), ("fill", cache), ("read", cache)):
        train_run(load_config(None, run_args(setup, method, tmp_path / name, *options, *extra)))
        weights[name] = torch.load(tmp_path / name / "student_last.pth", weights_only=True)["model"]
    views = ["image", "image_strong"] if method_class(method).needs_strong_view else ["image"]
    assert sorted(p.name for p in (tmp_path / "cache").glob("epoch_*")) == [
        f"epoch_{epoch:04d}.{view}.bin" for epoch in (0, 1) for view in sorted(views)]
    for name in ("fill", "read"):
        difference = max((weights[name][key].float() - weights["teacher"][key].float()).abs().max().item()
                         for key in weights["teacher"])
        assert difference <= 1e-6, (name, difference)
    # Training moved the weights, so equality says something.
    cfg = load_config(str(tmp_path / "read" / "config.yaml"))
    initial = create_model(cfg.student, num_classes=CLASSES, **cfg.student_options).state_dict()
    classifier = next(key for key in ("fc.weight", "model.head.weight") if key in initial)
    assert not torch.equal(initial[classifier], weights["read"][classifier])


def test_a_grid_runs_the_teacher_once_per_seed_and_epoch(setup, tmp_path, monkeypatch):
    samples = []
    original = WideResNet.extract

    def counting_extract(self, x, preact=False):
        if x.abs().sum() > 0:  # not a zero probe batch that sizes a method's parts
            samples.append(x.shape[0])
        return original(self, x, preact)

    monkeypatch.setattr(WideResNet, "extract", counting_extract)
    for seed in (0, 1):  # a cache per seed: the views depend on it
        for method in ("kd", "dcd+kd", "crd"):
            args = run_args(setup, method, tmp_path / f"{method}_{seed}", *METHOD_OPTIONS[method], f"seed={seed}",
                            f"teacher_cache={tmp_path / f'cache_seed{seed}'}", "steps_per_epoch=2")
            train_run(load_config(None, args))
    # One pass per (seed, epoch) over the samples the capped runs read (2 batches of 32 of the 96),
    # not one per run; besides that, each run's start-up check of the teacher's outputs on one test
    # batch (the 16 val images).
    assert sum(samples) == 2 * 2 * (2 * 32) + 6 * 4 * CLASSES


# A method reading the teacher's stage maps, and what the refusal says it reads.
FEATURE_MAP_READS = {"fitnet": "preact and stages", "reviewkd": "preact", "simkd": "stages",
                     "ofd": "preact", "kdsvd": "stages", "semckd": "stages"}


@pytest.mark.parametrize("method", list(FEATURE_MAP_READS))
def test_a_feature_map_method_refuses_the_cache(setup, tmp_path, method):
    cache = f"teacher_cache={tmp_path / 'cache'}"
    result = run_kdistill("distill", *run_args(setup, method, tmp_path / "run", cache))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kdistill: error: method '{method}' reads the teacher's {FEATURE_MAP_READS[method]}, which teacher_cache= "
        "does not store (only logits and the pooled feature): drop teacher_cache= for this method"]


def test_a_cache_of_another_seed_or_teacher_is_refused(setup, tmp_path):
    _, teachers = setup
    cache = f"teacher_cache={tmp_path / 'cache'}"
    filled = run_kdistill("cache", *run_args(setup, "kd", tmp_path / "unused", cache, "epochs=1"))
    assert filled.returncode == 0, filled.stderr
    assert "teacher cache" in filled.stdout and "MB (logits" in filled.stdout  # the disk use, before filling
    for override, mismatch in ((["seed=1"], "seed is 0 there but 1 in this run"),
                               ([f"teacher_checkpoint={teachers[1]}"], "teacher.weights_sha256 is ")):
        result = run_kdistill("distill", *run_args(setup, "kd", tmp_path / "run", cache, *override))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and mismatch in lines[0] and "use another teacher_cache=" in lines[0], lines


def test_two_processes_filling_one_cache_at_once_leave_a_valid_cache(setup, tmp_path):
    cache = tmp_path / "cache"
    args = run_args(setup, "kd", tmp_path / "unused", f"teacher_cache={cache}", "teacher_cache_dtype=float32")
    processes = [subprocess.Popen(kdistill_command() + ["cache", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    assert not list(cache.glob(".*"))  # no temporary file left
    manifest = json.loads((cache / MANIFEST_FILE).read_text())
    assert manifest["dtype"] == "float32" and manifest["seed"] == 0
    # The files hold what a fresh single fill computes.
    reference = tmp_path / "reference"
    single = run_kdistill("cache", *run_args(setup, "kd", tmp_path / "unused", f"teacher_cache={reference}",
                                             "teacher_cache_dtype=float32"))
    assert single.returncode == 0, single.stderr
    for epoch in (0, 1):
        name = f"epoch_{epoch:04d}.image.bin"
        table = np.fromfile(cache / name, dtype=np.float32)
        assert table.size == TRAIN_PER_CLASS * CLASSES * (CLASSES + 64)  # logits + wrn_16_1's 64-wide pooled feature
        assert np.array_equal(table, np.fromfile(reference / name, dtype=np.float32))


# ---- the cache's identity: every key that changes the teacher's inputs or outputs --------------

TRAIN_VIEW_CHANGES = {
    "data.mean": ["data.mean=[0.4,0.4,0.4]"],
    "data.std": ["data.std=[0.2,0.2,0.2]"],
    "data.train_transform": ["data.train_transform=deit"],
    "data.rand_augment": ["data.rand_augment=rand-m5-mstd0.5"],
    "data.color_jitter": ["data.color_jitter=0.4"],
    "data.random_erasing": ["data.random_erasing=0.5"],
    "data.interpolation": ["data.interpolation=bicubic"],
    "data.image_size": ["data.image_size=12"],
    "data.augment": ["data.augment=false"],
    "data.val_fraction": ["data.val_fraction=0.25"],
    "channels_last": ["channels_last=false"],
    "precision": ["precision=bf16"],
}


@pytest.fixture(scope="module")
def filled_cache(setup, tmp_path_factory):
    """A one-epoch cache of the default run's teacher outputs."""
    folder = tmp_path_factory.mktemp("identity") / "cache"
    args = run_args(setup, "kd", folder.parent / "unused", f"teacher_cache={folder}", "epochs=1")
    fill_teacher_cache(load_config(None, args))
    return folder


@pytest.mark.parametrize("key", list(TRAIN_VIEW_CHANGES))
def test_a_cache_filled_under_another_train_view_is_refused_naming_the_key(setup, filled_cache, tmp_path, key):
    args = run_args(setup, "kd", tmp_path / "run", f"teacher_cache={filled_cache}", "epochs=1",
                    *TRAIN_VIEW_CHANGES[key])
    with pytest.raises(KdistillError) as refused:
        train_run(load_config(None, args))
    message = str(refused.value)
    assert f"({key} is " in message and "there but" in message and "use another teacher_cache=" in message, message
    assert "\n" not in message


def test_an_image_folder_swapped_under_another_root_is_refused(setup, filled_cache, tmp_path):
    root, _ = setup
    swapped = tmp_path / "images"
    shutil.copytree(root / "images", swapped)
    first = swapped / "train" / "class0" / "0.png"
    Image.fromarray(np.full((20, 20, 3), 7, dtype=np.uint8)).save(first)  # same name, other pixels
    args = run_args(setup, "kd", tmp_path / "run", f"teacher_cache={filled_cache}", "epochs=1",
                    f"data.root={swapped}")
    with pytest.raises(KdistillError, match=r"\(data\.tree_state is '[0-9a-f]+' there but"):
        train_run(load_config(None, args))


def test_the_refusal_is_one_line_through_the_command(setup, filled_cache, tmp_path):
    result = run_kdistill("distill", *run_args(setup, "kd", tmp_path / "run", f"teacher_cache={filled_cache}",
                                               "epochs=1", "data.mean=[0.4,0.4,0.4]"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "(data.mean is None there but [0.4, 0.4, 0.4] in this run)" in lines[0], lines


def test_the_identity_holds_every_key_but_the_listed_neutral_ones(setup, tmp_path):
    base = load_config(None, run_args(setup, "kd", tmp_path / "a", f"teacher_cache={tmp_path / 'c'}"))
    identity = cache_identity(base)
    # A data key is part of the identity unless it is listed as neutral: a new one counts by default.
    for field in dataclasses.fields(DataConfig):
        assert (f"data.{field.name}" in identity) != (f"data.{field.name}" in TEACHER_NEUTRAL_KEYS), field.name
    # What the student does, and where the run writes, leave the identity as it is.
    other = load_config(None, run_args(setup, "dkd", tmp_path / "b", f"teacher_cache={tmp_path / 'd'}",
                                       "optim.lr=0.2", "schedule.name=cosine", "epochs=7", "student=resnet14",
                                       "data.num_workers=2", "steps_per_epoch=1"))
    assert cache_identity(other) == identity
    assert {"seed", "teacher", "precision", "channels_last", "teacher_cache_dtype", "data.mean"} <= identity.keys()


# ---- nothing wrong is read silently: checksums, the manifest, a capped fill -----------------------

@pytest.fixture(scope="module")
def checked_cache(setup, tmp_path_factory):
    """A float32 one-epoch cache filled by `kdistill cache`, with its progress bar on."""
    folder = tmp_path_factory.mktemp("checked") / "cache"
    filled = run_kdistill("cache", *run_args(setup, "kd", folder.parent / "unused", f"teacher_cache={folder}",
                                             "teacher_cache_dtype=float32", "epochs=1", "progress=true"))
    assert filled.returncode == 0, filled.stderr
    assert "teacher cache: epoch 1 image" in filled.stderr  # the fill's progress bar
    return folder


def _damaged_copy(cache, tmp_path, damage) -> tuple:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    damage(copy)
    return copy


def _flip_bytes(folder):
    path = folder / "epoch_0000.image.bin"
    data = bytearray(path.read_bytes())
    for offset in range(1000, 1200):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _swap_rows(folder):
    table = np.fromfile(folder / "epoch_0000.image.bin", dtype=np.float32).reshape(TRAIN_PER_CLASS * CLASSES, -1)
    table[[3, 7]] = table[[7, 3]]
    table.tofile(folder / "epoch_0000.image.bin")


@pytest.mark.parametrize("command, damage", [("distill", _flip_bytes), ("cache", _swap_rows)])
def test_a_changed_epoch_file_is_refused_naming_it(setup, checked_cache, tmp_path, command, damage):
    cache = _damaged_copy(checked_cache, tmp_path, damage)
    result = run_kdistill(command, *run_args(setup, "kd", tmp_path / "run", f"teacher_cache={cache}",
                                             "teacher_cache_dtype=float32", "epochs=1", "schedule.name=cosine"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kdistill: error: teacher cache file {cache / 'epoch_0000.image.bin'} does not match its checksum in the "
        "manifest (its bytes changed after it was filled): delete it and it is filled again"]
    assert not (tmp_path / "run" / "student_last.pth").exists()


def test_a_deleted_manifest_is_refused_and_not_written_again(setup, checked_cache, tmp_path):
    cache = _damaged_copy(checked_cache, tmp_path, lambda folder: (folder / MANIFEST_FILE).unlink())
    result = run_kdistill("distill", *run_args(setup, "kd", tmp_path / "run", f"teacher_cache={cache}",
                                               "teacher_cache_dtype=float32", "epochs=1", "seed=1"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kdistill: error: teacher cache {cache} holds epoch files but no manifest.json, so what they were computed "
        "from is unknown: delete the folder (it is filled again) or choose another teacher_cache=<folder>"]
    assert not (cache / MANIFEST_FILE).exists()


def _replace_manifest(text):
    return lambda folder: (folder / MANIFEST_FILE).write_text(text)


def _entry_without_checksum(folder):
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    del manifest["files"]["epoch_0000.image.bin"]["sha256"]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _directory_for_epoch_file(folder):
    (folder / "epoch_0000.image.bin").unlink()
    (folder / "epoch_0000.image.bin").mkdir()


@pytest.mark.parametrize("damage, message", [
    (_replace_manifest("{not json"), "is not valid JSON (empty or damaged)"),
    (_replace_manifest(""), "is not valid JSON (empty or damaged)"),
    (_replace_manifest("[1, 2]"), "is not a kdistill teacher-cache manifest"),
    (_entry_without_checksum, "is not a kdistill teacher-cache manifest"),
    (_directory_for_epoch_file, "epoch_0000.image.bin is not a file: delete it"),
], ids=["invalid-json", "empty", "a-list", "an-entry-without-checksum", "a-directory"])
def test_a_malformed_cache_is_one_line(setup, checked_cache, tmp_path, damage, message):
    cache = _damaged_copy(checked_cache, tmp_path, damage)
    args = run_args(setup, "kd", tmp_path / "run", f"teacher_cache={cache}", "teacher_cache_dtype=float32", "epochs=1")
    with pytest.raises(KdistillError) as refused:
        fill_teacher_cache(load_config(None, args))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_capped_fill_holds_the_capped_batches_and_a_longer_run_fills_the_rest(setup, checked_cache, tmp_path):
    cache = tmp_path / "cache"
    args = run_args(setup, "kd", tmp_path / "run", f"teacher_cache={cache}", "teacher_cache_dtype=float32", "epochs=1")
    _, filled = fill_teacher_cache(load_config(None, [*args, "steps_per_epoch=1"]))
    entry = json.loads((cache / MANIFEST_FILE).read_text())["files"]["epoch_0000.image.bin"]
    assert filled == 1 and entry["batches"] == 1
    table = np.fromfile(cache / "epoch_0000.image.bin", dtype=np.float32).reshape(TRAIN_PER_CLASS * CLASSES, -1)
    assert (table.any(axis=1)).sum() == 32  # one batch of rows computed, the others not
    _, filled = fill_teacher_cache(load_config(None, args))  # uncapped: fills the other 64 rows
    entry = json.loads((cache / MANIFEST_FILE).read_text())["files"]["epoch_0000.image.bin"]
    assert filled == 1 and entry["batches"] is None
    # What a capped fill and its completion hold equals one full fill.
    assert (cache / "epoch_0000.image.bin").read_bytes() == (checked_cache / "epoch_0000.image.bin").read_bytes()
    _, filled = fill_teacher_cache(load_config(None, [*args, "steps_per_epoch=2"]))
    assert filled == 0  # a complete file serves a capped run


# ---- the compact cache (teacher_cache_topk=K) ----------------------------------------------------

def test_topk_rows_keep_the_top_k_exactly_and_the_rest_s_mass():
    torch.manual_seed(0)
    teacher = torch.randn(6, 20) * 3
    rows = TopKRows(torch.float32, num_classes=20, k=5)
    rebuilt = rows.decode(rows.encode(teacher)).logits
    for sample in range(6):  # restated with lists: the 5 largest, the others' summed probability
        true = [math.exp(v) for v in teacher[sample].tolist()]
        top = sorted(range(20), key=lambda c: -true[c])[:5]
        got = [math.exp(v) for v in rebuilt[sample].tolist()]
        for c in top:
            assert math.isclose(got[c] / sum(got), true[c] / sum(true), rel_tol=1e-5)
        rest = [c for c in range(20) if c not in top]
        assert math.isclose(sum(got[c] for c in rest) / sum(got), sum(true[c] for c in rest) / sum(true), rel_tol=1e-5)
        assert max(got[c] for c in rest) == pytest.approx(min(got[c] for c in rest), rel=1e-5)  # spread evenly


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kd_loss_from_topk_rows_is_exact_on_the_top_k_terms_at_temperature_1(dtype):
    torch.manual_seed(1)
    teacher, student = torch.randn(4, 12, dtype=dtype) * 2, torch.randn(4, 12, dtype=dtype)
    rows = TopKRows(torch.float32, num_classes=12, k=4)
    rebuilt = rows.decode(rows.encode(teacher)).logits.to(dtype)
    # Restated: sum over the top 4 of p log(p / q) with the true p, plus the rest's mass spread evenly.
    expected = 0.0
    for t, s in zip(teacher.tolist(), student.tolist(), strict=True):
        p = [math.exp(v) / sum(math.exp(w) for w in t) for v in t]
        q = [math.exp(v) / sum(math.exp(w) for w in s) for v in s]
        top = sorted(range(12), key=lambda c: -p[c])[:4]
        rest_share = sum(p[c] for c in range(12) if c not in top) / 8
        expected += sum(p[c] * math.log(p[c] / q[c]) for c in top)
        expected += sum(rest_share * math.log(rest_share / q[c]) for c in range(12) if c not in top)
    loss = kd_loss(student, rebuilt, temperature=1.0)
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5 if dtype == torch.float32 else 1e-6)


def test_a_topk_cache_trains_kd_and_is_refused_where_it_cannot_serve(setup, tmp_path):
    cache = tmp_path / "cache"
    args = run_args(setup, "kd", tmp_path / "run", f"teacher_cache={cache}", "teacher_cache_topk=2", "epochs=1",
                    "steps_per_epoch=2")
    results = train_run(load_config(None, args))
    assert results.top1_last is not None
    manifest = json.loads((cache / MANIFEST_FILE).read_text())
    # 2 logits (float16) + 2 classes (int16) + the rest's log-sum-exp (float32) per sample.
    assert manifest["teacher_cache_topk"] == 2 and (cache / "epoch_0000.image.bin").stat().st_size == 96 * 12
    for method, extra, message in (
            ("crd", ["method.num_negatives=32"], "method 'crd' needs the teacher's full outputs"),
            ("kd", ["teacher_cache_topk=4"], "teacher_cache_topk=4 is outside [1, 3]"),
            ("kd", ["teacher_cache_topk=3"], "(teacher_cache_topk is 2 there but 3 in this run)")):
        other = run_args(setup, method, tmp_path / "other", f"teacher_cache={cache}", "teacher_cache_topk=2",
                         "epochs=1", *METHOD_OPTIONS.get(method, []), *extra)
        with pytest.raises(KdistillError) as refused:
            train_run(load_config(None, other))
        assert message in str(refused.value)


def test_two_processes_under_torchrun_fill_the_bytes_of_one(setup, tmp_path):
    args = run_args(setup, "kd", tmp_path / "unused", "teacher_cache_dtype=float32", "epochs=1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "kdistill", "cache", *args, f"teacher_cache={tmp_path / 'two'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    single = run_kdistill("cache", *args, f"teacher_cache={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr
    name = "epoch_0000.image.bin"
    assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    two = json.loads((tmp_path / "two" / MANIFEST_FILE).read_text())["files"][name]
    assert two == json.loads((tmp_path / "one" / MANIFEST_FILE).read_text())["files"][name]


def test_runs_that_need_one_epoch_at_once_fill_it_once(setup, tmp_path):
    args = run_args(setup, "kd", tmp_path / "unused", f"teacher_cache={tmp_path / 'cache'}", "epochs=1")
    processes = [subprocess.Popen(kdistill_command() + ["cache", *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    # The filler announces the disk use before it fills; the other waited on the lock, then found it filled.
    assert sorted("MB (logits" in stdout for stdout, _ in outputs) == [False, True], outputs
    assert sorted("(1 epoch files computed now)" in stdout for stdout, _ in outputs) == [False, True], outputs


def test_a_fill_in_larger_batches_serves_the_same_runs(setup, checked_cache, tmp_path):
    cache = tmp_path / "cache"
    args = run_args(setup, "kd", tmp_path / "run", f"teacher_cache={cache}", "teacher_cache_dtype=float32", "epochs=1")
    fill_teacher_cache(load_config(None, [*args, "teacher_cache_fill_batch=96"]))  # one teacher pass for the epoch
    name = "epoch_0000.image.bin"
    # The same samples' outputs as in the run's batches of 32, up to rounding.
    assert np.allclose(np.fromfile(cache / name, dtype=np.float32), np.fromfile(checked_cache / name, dtype=np.float32),
                       rtol=1e-5, atol=1e-5)
    _, filled = fill_teacher_cache(load_config(None, args))  # a run without the option reads it
    assert filled == 0
