"""The evaluation commands through the real entry point, on a tiny teacher and KD student.

The runs train and evaluate on a small MNIST-format copy of embedded images (128 train, 64
test), so that every command reads a few hundred images. Importing torch and torchvision takes
most of each command's seconds, so the commands run once per module, two at a time, and the
tests check what they wrote.
"""

import json
import pickle
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    QUICK_RUN,
    assert_nonblank_png,
    assert_user_error,
    kdistill_command,
    run_kdistill,
    write_mnist_format,
)

from kdistill.data import DATASETS
from kdistill.errors import KdistillError


def write_cifar100_format(folder: Path, samples: int = 64) -> Path:
    """A tiny stand-in with CIFAR-100's file layout: 100 classes of 3-channel 32x32 images."""
    data = folder / "cifar-100-python"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        entry = {"data": rng.integers(0, 256, (samples, 3072), dtype=np.uint8), "fine_labels": list(range(samples))}
        (data / name).write_bytes(pickle.dumps(entry))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Data folders, a teacher run and a KD student run of it, made once for the module."""
    from kdistill.config.loading import load_config
    from kdistill.engine import train_run

    root = tmp_path_factory.mktemp("eval_cli")
    source = DATASETS.get("embedded")(None, False)
    train_images, train_labels = source.train.images[:, 0].numpy(), source.train.labels.numpy()
    test_images, test_labels = source.test.images[:, 0].numpy(), source.test.labels.numpy()
    small = write_mnist_format(root / "small", (train_images[:128], train_labels[:128]),
                               (test_images[:64], test_labels[:64]))
    # The OOD / probe set: other images, inverted (a different distribution with the same classes).
    other = write_mnist_format(root / "other", (255 - train_images[128:256], train_labels[128:256]),
                               (255 - test_images[64:128], test_labels[64:128]))
    data = ["data.name=mnist", f"data.root={small}", "epochs=1"]
    teacher = root / "runs" / "teacher"
    train_run(load_config(None, QUICK_RUN + data + [f"out={teacher}"]))
    student = root / "runs" / "kd"
    train_run(load_config(None, QUICK_RUN + data + ["method.name=kd", "teacher=resnet8",
                                                    f"teacher_checkpoint={teacher}", f"out={student}"]))
    return {"root": root, "teacher": teacher, "student": student, "other": other, "small": small}


@pytest.fixture(scope="module")
def results(runs) -> dict[str, subprocess.CompletedProcess]:
    """Each command's completed process, by name; the commands write beside the runs."""
    teacher, student, other, root = runs["teacher"], runs["student"], runs["other"], runs["root"]
    same_teacher = ["teacher=resnet8", f"teacher_checkpoint={teacher}"]
    cifar100 = write_cifar100_format(root / "cifar100")
    # Overrides stand after every list option and between targets: they are never a list's value.
    commands = {
        "faithfulness": ["faithfulness", str(teacher), "--corruptions", "jpeg", "progress=false", "--severities", "1",
                         "5", *same_teacher],
        "correlate": ["correlate", str(student), *same_teacher, str(teacher), "--out", str(root / "correlation.png"),
                      "progress=false"],
        "knn": ["knn", str(student), "--k", "5", "128", "300", "progress=false"],
        "knn_bank": ["knn", str(student), "knn.bank_size=40", "--k", "5", "128", "progress=false"],
        "probe": ["probe", "probe.name=fashion-mnist", str(student), f"probe.root={other}"],
        "ood": ["ood", str(student), "ood.name=fashion-mnist", f"ood.root={other}"],
        "bad_bank": ["knn", str(student), "knn.bank_size=0"],
        "ood_bank": ["ood", str(student), "ood.name=fashion-mnist", f"ood.root={other}", "ood.bank_size=50"],
        "robustness": ["robustness", str(student), "--corruptions", "gaussian_noise", "pixelate", "device=cpu",
                       "--severities", "2", "progress=false"],
        "report": ["report", str(root / "runs"), "--out", str(root / "report")],
        "mismatch": ["knn", str(student), "data.name=cifar100", f"data.root={cifar100}"],
    }

    # The probe on an image folder, streamed by DataLoader workers, in a process that may use one CPU.
    source = DATASETS.get("fashion-mnist")(str(other), False)
    folder = write_grey_image_folder(root / "grey_probe", source.test.images[:16, 0].numpy(),
                                     source.test.labels[:16].numpy())
    one_cpu = ["taskset", "-c", "0", *kdistill_command(), "probe", str(student), "probe.name=imagefolder",
               f"probe.root={folder}", "progress=false"]
    with ThreadPoolExecutor(max_workers=2) as pool:  # the two cores
        futures = {name: pool.submit(run_kdistill, *args) for name, args in commands.items()}
        futures["probe_one_cpu"] = pool.submit(subprocess.run, one_cpu, capture_output=True, text=True, timeout=600,
                                               check=False)
    return {name: future.result() for name, future in futures.items()}


def succeeded(results: dict[str, subprocess.CompletedProcess], name: str) -> str:
    result = results[name]
    assert result.returncode == 0, result.stderr
    return result.stdout


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_faithfulness_of_a_model_to_itself_is_perfect(results, runs):
    assert "top-1 agreement 1.0000" in succeeded(results, "faithfulness")
    report = read_json(runs["teacher"] / "faithfulness_last.json")
    assert report["agreement"] == 1.0 and report["kl_teacher_student"] == pytest.approx(0.0, abs=1e-9)
    assert report["cka_pooled"] == pytest.approx(1.0, abs=1e-6)
    assert report["corruption_agreement"] == {"jpeg": {"1": 1.0, "5": 1.0}}


def test_correlate_draws_a_panel_per_run(results, runs):
    succeeded(results, "correlate")
    report = read_json(runs["root"] / "correlation.json")
    assert [run["method"] for run in report["runs"]] == ["kd", "vanilla"]
    assert report["runs"][0]["mean_abs_difference"] > 0.0
    assert report["runs"][1]["mean_abs_difference"] == 0.0  # the teacher against itself
    assert_nonblank_png(runs["root"] / "correlation.png")


def test_knn_of_student_and_teacher(results, runs):
    succeeded(results, "knn")
    report = read_json(runs["student"] / "knn_last.json")
    assert report["bank_size"] == 128 and set(report["top1"]) == {"student", "teacher"}
    for by_k in report["top1"].values():
        assert set(by_k) == {"5", "128", "300"} and by_k["300"] == by_k["128"]  # k is capped at the bank size
    assert report["top1"]["student"]["5"] > 30.0  # 10 classes, a briefly trained model's features


def test_knn_and_ood_on_a_keyed_subset_of_the_bank(results, runs):
    from kdistill.eval.common import bank_indices

    assert "bank of 40 train features" in succeeded(results, "knn_bank")
    report = read_json(runs["student"] / "knn_bank40_last.json")
    assert report["bank_size"] == 40 and set(report["top1"]["student"]) == {"5", "128"}
    succeeded(results, "ood_bank")
    assert read_json(runs["student"] / "ood_fashion-mnist_bank50_last.json")["samples"]["bank"] == 50
    # The subset: keyed by the seed alone, in the split's order, every sample when it asks for more.
    subset = bank_indices(128, 40, seed=0)
    assert len(subset) == 40 and subset.unique().numel() == 40 and subset.tolist() == sorted(subset.tolist())
    assert torch.equal(subset, bank_indices(128, 40, seed=0)) and not torch.equal(subset, bank_indices(128, 40, seed=1))
    assert bank_indices(128, 500, seed=0).tolist() == list(range(128))


def test_a_bank_size_that_is_no_count_is_one_line(results):
    assert_user_error(results["bad_bank"], "knn.bank_size=0 is not a positive whole number")


def test_knn_on_another_data_set_uses_the_models_normalisation(results, runs):
    """The run's own images declared as Fashion-MNIST (other mean and std): renormalised to the
    model's training statistics, they must score exactly as the run's own data."""
    from kdistill.eval.knn import run_knn

    own = read_json(runs["student"] / "knn_last.json")
    other = run_knn(str(runs["student"]), ["knn.name=fashion-mnist", f"knn.root={runs['small']}", "progress=false"],
                    ks=(5, 128, 300))
    assert other["dataset"] == "fashion-mnist" and other["model_dataset"] == "mnist"
    assert other["top1"] == own["top1"]
    assert other["written_to"].endswith("knn_fashion-mnist_last.json")


def test_probe_caches_the_features(results, runs):
    from kdistill.eval.probe import run_probe

    succeeded(results, "probe")
    student = runs["student"]
    report = read_json(student / "probe_fashion-mnist_last.json")
    assert set(report["top1"]) == {"student", "teacher"} and report["image_size"] == 28
    assert report["top1"]["student"] > 30.0
    cache = Path(report["features_cache"])
    written = cache.stat().st_mtime_ns
    probe_data = ["probe.name=fashion-mnist", f"probe.root={runs['other']}", "progress=false"]
    again = run_probe(str(student), probe_data, weight_decay=0.01)
    assert cache.stat().st_mtime_ns == written  # the features were read back, not recomputed
    assert again["weight_decay"] == 0.01 and again["top1"] != report["top1"]


def test_the_probe_starts_no_more_data_workers_than_cpus(results):
    """data.num_workers' default (4) is capped at the CPUs the process may use: no DataLoader warning."""
    assert "linear probe" in succeeded(results, "probe_one_cpu").lower()
    assert "worker" not in results["probe_one_cpu"].stderr, results["probe_one_cpu"].stderr


def test_ood_scores_of_student_and_teacher(results, runs):
    assert "nearest_neighbour" in succeeded(results, "ood")
    report = read_json(runs["student"] / "ood_fashion-mnist_last.json")
    assert report["samples"] == {"in": 64, "ood": 64, "bank": 128}
    for by_score in report["metrics"].values():
        assert set(by_score) == {"max_softmax", "energy", "nearest_neighbour"}
        # Inverted digits lie far from every training feature (the softmax scores are fooled by them).
        assert by_score["nearest_neighbour"]["auroc"] > 0.6
    assert "warning" not in report


def write_grey_image_folder(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """An imagefolder tree of 8-bit grey PNGs (read back as RGB by the folder reader)."""
    from PIL import Image

    for split in ("train", "val"):
        for number, (image, label) in enumerate(zip(images, labels)):
            path = folder / split / f"class{label}" / f"{number}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(path)
    return folder


def test_ood_on_a_grey_image_folder_for_a_one_channel_model(results, runs, capsys):
    from kdistill.eval.ood import run_ood

    source = DATASETS.get("fashion-mnist")(str(runs["other"]), False)
    folder = write_grey_image_folder(runs["root"] / "grey", source.test.images[:, 0].numpy(),
                                     source.test.labels.numpy())
    report = run_ood(str(runs["student"]), ["ood.name=imagefolder", f"ood.root={folder}", "ood.num_workers=0",
                                            "progress=false"])
    assert "converted to the model's 1" in capsys.readouterr().err
    assert report["samples"] == {"in": 64, "ood": 64, "bank": 128}
    # The same images as the MNIST-format OOD set, rescaled by the folder's resize-and-crop: close scores.
    as_idx = read_json(runs["student"] / "ood_fashion-mnist_last.json")["metrics"]
    for role, by_score in report["metrics"].items():
        assert by_score["nearest_neighbour"]["auroc"] == pytest.approx(
            as_idx[role]["nearest_neighbour"]["auroc"], abs=0.1)


def test_ood_against_the_in_distribution_set_warns(runs, capsys):
    from kdistill.eval.ood import run_ood

    report = run_ood(str(runs["student"]), ["ood.name=mnist", f"ood.root={runs['small']}", "progress=false"])
    assert "OOD set's test images are the in-distribution test images" in capsys.readouterr().err
    assert "AUROC 0.5" in report["warning"]
    for by_score in report["metrics"].values():
        assert all(values["auroc"] == 0.5 for values in by_score.values())


def test_robustness_of_student_and_teacher(results, runs):
    assert "mean corruption" in succeeded(results, "robustness")
    report = read_json(runs["student"] / "robustness_last.json")
    accuracy = report["corruption_top1"]["student"]
    assert set(accuracy) == {"gaussian_noise", "pixelate"}
    assert report["mean_corruption_top1"]["student"] == pytest.approx(
        (accuracy["gaussian_noise"]["2"] + accuracy["pixelate"]["2"]) / 2)


def test_report_of_the_runs(results, runs):
    stdout = succeeded(results, "report")
    top1 = {run: read_json(runs[run] / "results.json")["top1_last"] for run in ("teacher", "student")}
    assert "|  | resnet8 → resnet8 | rel. improvement over KD |" in stdout
    # The teacher (a vanilla resnet8) is also the vanilla student row; one run per cell.
    assert f"| teacher | {top1['teacher']:.2f} (1) |  |" in stdout
    assert f"| student (vanilla) | {top1['teacher']:.2f} (1) |  |" in stdout
    assert f"| kd | {top1['student']:.2f} (1) |  |" in stdout
    assert (runs["root"] / "report" / "table.csv").is_file()
    assert_nonblank_png(runs["root"] / "report" / "curves" / "kd.png")


def test_mismatched_model_and_data_are_one_line_errors(results, runs):
    from kdistill.eval.faithfulness import run_faithfulness
    from kdistill.eval.ood import run_ood

    assert_user_error(results["mismatch"], "has 10 classes but data set 'cifar100' has 100")
    cifar100 = runs["root"] / "cifar100"
    with pytest.raises(KdistillError, match="no teacher"):
        run_faithfulness(str(runs["teacher"]), [])
    with pytest.raises(KdistillError, match="set ood.name"):
        run_ood(str(runs["student"]), [f"ood.root={cifar100}"])
